"""Loss spikes: where they are, which batch caused each, and whether the data or the optimizer did.

A **spike** is a step whose training loss, or unclipped gradient norm, is more than
``detect.spike_sigma`` (6) standard deviations above the ``detect.spike_window`` (128) steps
before it, judged once that window is half full: OLMo-core's ``SkipStepOptimizer`` rule, read
after the fact, with one change: the window's centre and spread are its median and its
median absolute deviation (× 1.4826, σ for Gaussian noise), not its mean and standard
deviation. An outlier batch recurs every epoch; with the mean and standard deviation the
earlier occurrences in the window inflate σ until the later ones no longer stand out (a
planted batch every 14 steps hides from the plain rule after the first). ``train.skip_spikes``
keeps OLMo-core's rule exactly (``training/skipping.py``).

**Attribution.** Every trial of one seed sees the same batches in the same order (the seed
draws the data order), and a sweep trains many rates on them, which is what tells the two
causes apart (module of record: this one):

* **data**: the same batch (seed, epoch, index) spikes in trials of at least two rates, the
  lowest rate that reached that batch among them: a batch that hurts even at the lowest rate
  is an outlier in the data, not a rate too high. Trials of one rate (a clip sweep's, say)
  follow the same dynamics until their settings part them, so their spiking together is no
  evidence: such spikes stay the optimizer's. And a spike at the lowest rate that reached
  its step, at a batch position (seed, index) already found to be the data's in another
  epoch, is the data's too: an unshuffled stream repeats its bad batch every epoch, and a
  higher rate may have fit it by then;
* **data** too: a spike in epoch 0 at a batch whose loss at initialisation is an outlier
  (doctor's ``batch_outliers`` rule: ``doctor.outlier_factor`` × the median batch's), found by
  a forward pass of the untrained model over the first epoch up to that batch (in data order,
  within ``doctor.scan_seconds``);
* **optimization**: every other spike, a high rate's own (different batches, or not the
  lowest rate).

A trial whose only trouble is a data spike is not unstable for its rate (``analysis/lr.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

COLUMNS = [
    "trial_id",
    "lr",
    "seed",
    "step",
    "epoch",
    "batch",
    "loss",
    "z",
    "grad_norm",
    "grad_norm_z",
    "recovered_step",
    "kind",
]


def detect(steps: pd.DataFrame, trials: pd.DataFrame, sigma: float, window: int) -> pd.DataFrame:
    """Every spike of every trial (COLUMNS), attributed. ``steps``: steps.csv (``trial_id``,
    ``step``, ``train_loss``, ``grad_norm``, and ``epoch``/``batch`` when known)."""
    if not len(steps):
        return pd.DataFrame(columns=COLUMNS)
    frame = steps.sort_values(["trial_id", "step"]).copy()
    least = max(2, window // 2)
    found = []
    for trial_id, part in frame.groupby("trial_id", sort=True):
        loss = part["train_loss"].astype(float)
        norm = part["grad_norm"].astype(float)
        loss_z = _z(loss, window, least)
        norm_z = _z(norm, window, least)
        hit = (loss_z > sigma) | (norm_z > sigma)
        if not hit.any():
            continue
        values, steps_of = loss.to_numpy(), part["step"].to_numpy()
        for i in np.flatnonzero(hit.to_numpy()):
            earlier = values[max(0, i - window) : i]
            centre = np.nanmedian(earlier)
            level = centre + 1.4826 * np.nanmedian(np.abs(earlier - centre))
            later = np.flatnonzero(values[i + 1 :] <= level)
            found.append(
                {
                    "trial_id": int(trial_id),
                    "step": int(steps_of[i]),
                    "epoch": part["epoch"].iloc[i] if "epoch" in part else np.nan,
                    "batch": part["batch"].iloc[i] if "batch" in part else steps_of[i] - 1,
                    "loss": values[i],
                    "z": float(loss_z.iloc[i]),
                    "grad_norm": float(norm.iloc[i]),
                    "grad_norm_z": float(norm_z.iloc[i]),
                    "recovered_step": int(steps_of[i + 1 + later[0]]) if len(later) else np.nan,
                }
            )
    if not found:
        return pd.DataFrame(columns=COLUMNS)
    spikes = pd.DataFrame(found)
    info = trials.set_index("trial_id")
    spikes["lr"] = spikes["trial_id"].map(info["lr"]).astype(float)
    spikes["seed"] = spikes["trial_id"].map(info["seed"]) if "seed" in info else 0
    spikes["kind"] = attribute(spikes, trials)
    return spikes[COLUMNS]


def _z(values: pd.Series, window: int, least: int) -> pd.Series:
    """How many robust standard deviations (1.4826 × the median absolute deviation) each value
    is above the median of the ``window`` values before it; 0 before ``least`` of them exist."""
    x = values.to_numpy(dtype=float)
    z = np.zeros(len(x))
    for i in range(least, len(x)):  # the first windows grow; from `window` on they slide
        if i >= window:
            break
        z[i] = _robust_z(x[i], x[:i])
    if len(x) > window:
        from numpy.lib.stride_tricks import sliding_window_view

        earlier = sliding_window_view(x[:-1], window)  # earlier[k] = x[k : k + window], before x[k + window]
        centre = np.nanmedian(earlier, axis=1)
        spread = 1.4826 * np.nanmedian(np.abs(earlier - centre[:, None]), axis=1)
        spread = np.maximum(spread, 1e-6 * np.abs(centre) + 1e-12)
        z[window:] = (x[window:] - centre) / spread
    z[~np.isfinite(x)] = 0.0
    return pd.Series(np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0), index=values.index)


def _robust_z(value: float, earlier: np.ndarray) -> float:
    centre = np.nanmedian(earlier)
    spread = max(1.4826 * np.nanmedian(np.abs(earlier - centre)), 1e-6 * abs(centre) + 1e-12)
    return float((value - centre) / spread)


def attribute(spikes: pd.DataFrame, trials: pd.DataFrame) -> pd.Series:
    """ "data" or "optimization" per spike (the module docstring's rule)."""
    kinds = pd.Series("optimization", index=spikes.index)
    reached = trials.assign(seed=trials.get("seed", 0))
    for (seed, _epoch, _batch, step), group in spikes.groupby(["seed", "epoch", "batch", "step"], dropna=False):
        if group["lr"].nunique() < 2:  # one rate (a clip sweep's trials): the same dynamics, no evidence
            continue
        there = reached[(reached["seed"] == seed) & (reached["steps_run"] >= step)]
        lowest = float(there["lr"].min()) if len(there) else np.inf
        if float(group["lr"].min()) <= lowest:
            kinds[group.index] = "data"
    # a position found bad once and spiking again at the lowest rate that reached it: the same
    # batch again (an unshuffled stream repeats its bad batch every epoch)
    bad = {(s, b) for s, b in zip(spikes["seed"][kinds == "data"], spikes["batch"][kinds == "data"], strict=True)}
    for index, row in spikes[kinds == "optimization"].iterrows():
        if (row["seed"], row["batch"]) not in bad:
            continue
        there = reached[(reached["seed"] == row["seed"]) & (reached["steps_run"] >= row["step"])]
        if len(there) and float(row["lr"]) <= float(there["lr"].min()):
            kinds[index] = "data"
    return kinds


def mark_init_outliers(spikes: pd.DataFrame, outliers: dict[int, set[int]]) -> pd.DataFrame:
    """Spikes in epoch 0 at a batch whose loss at initialisation is an outlier (``outliers``:
    seed -> batch indices of epoch 0, by doctor's batch_outliers rule) are the data's."""
    if not len(spikes) or not outliers:
        return spikes
    hit = spikes.apply(
        lambda row: row["epoch"] == 0 and int(row["batch"]) in outliers.get(int(row["seed"]), set()), axis=1
    )
    return spikes.assign(kind=spikes["kind"].where(~hit, "data"))


def ranked_batches(spikes: pd.DataFrame) -> pd.DataFrame:
    """The batches that spiked, most trials first: seed, epoch, batch, step, trials, rates, kind."""
    if not len(spikes):
        return pd.DataFrame(columns=["seed", "epoch", "batch", "step", "trials", "lowest_lr", "highest_lr", "kind"])
    grouped = spikes.groupby(["seed", "epoch", "batch", "step"], dropna=False)
    table = grouped.agg(
        trials=("trial_id", "nunique"),
        lowest_lr=("lr", "min"),
        highest_lr=("lr", "max"),
        kind=("kind", "first"),
    ).reset_index()
    return table.sort_values(["trials", "step"], ascending=[False, True]).reset_index(drop=True)


def describe(spikes: pd.DataFrame, trials: pd.DataFrame | None = None) -> str | None:
    """The verdict's sentence on the spikes: the data's batches by name, then the optimizer's
    spikes in trials that went on to fail (with ``trials``; a healthy trial's lone excursions,
    common once the loss is near 0 and its spread tiny, stay in spikes.csv)."""
    if not len(spikes):
        return None
    table = ranked_batches(spikes)
    data = table[table["kind"] == "data"]
    words = []
    # one sentence per batch position: an unshuffled stream repeats its bad batch every epoch
    for (_, batch), group in list(data.groupby(["seed", "batch"], sort=False))[:3]:
        epochs = [int(e) for e in group["epoch"] if e == e]
        where = f"batch {int(batch)}"
        if epochs:
            shown = ", ".join(map(str, epochs[:4])) + (", …" if len(epochs) > 4 else "")
            where += f" of epoch{'s' * (len(epochs) > 1)} {shown}"
        steps = ", ".join(str(int(x)) for x in group["step"][:4]) + (", …" if len(group) > 4 else "")
        words.append(
            f"{where} (step{'s' * (len(group) > 1)} {steps}) spiked at every rate from "
            f"{group['lowest_lr'].min():.3g} to {group['highest_lr'].max():.3g}: inspect those samples"
        )
    optimizer = spikes[spikes["kind"] == "optimization"]
    if trials is not None and len(optimizer):
        from stabsweep.records import TrialStatus

        failing = trials[trials["status"].map(lambda s: TrialStatus.of(s).failing)]["trial_id"]
        optimizer = optimizer[optimizer["trial_id"].isin(failing)]
    if len(optimizer):
        rates = sorted(optimizer["lr"].unique())
        words.append(
            f"{len(optimizer)} spike{'s' * (len(optimizer) > 1)} of the optimizer's own in trials that failed (at rate"
            f"{'s' * (len(rates) > 1)} {', '.join(f'{r:.3g}' for r in rates[:4])}{', …' * (len(rates) > 4)})"
        )
    return "Spikes: " + "; ".join(words) + "." if words else None


def summary_of(spikes: pd.DataFrame, trials: pd.DataFrame | None = None) -> dict[str, Any]:
    """spikes in summary.json: counts by kind and the top batches."""
    table = ranked_batches(spikes)
    return {
        "count": len(spikes),
        "data": int((spikes["kind"] == "data").sum()) if len(spikes) else 0,
        "optimization": int((spikes["kind"] == "optimization").sum()) if len(spikes) else 0,
        "batches": [
            {
                k: (None if isinstance(v, float) and v != v else (v.item() if hasattr(v, "item") else v))
                for k, v in row.items()
            }
            for row in table.head(10).to_dict("records")
        ],
        "sentence": describe(spikes, trials),
    }


def data_spike_steps(spikes: pd.DataFrame) -> set[tuple[int, int]]:
    """``(trial_id, step)`` of every spike attributed to the data."""
    data = spikes[spikes["kind"] == "data"] if len(spikes) else spikes
    return {(int(t), int(s)) for t, s in zip(data["trial_id"], data["step"], strict=True)}
