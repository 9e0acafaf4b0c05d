"""What an lr sweep found: ``best_lr``, ``unstable_base_lr``, the per-rate table and the warnings.

The rules (docs/contract.md, "Detection rules"), for a sweep of one or several seeds per rate:

- a rate is *feasible* when every seed's trial is ok or unstable (and has an objective);
- ``best_lr`` is the feasible rate with the lowest mean objective over its seeds;
- ``unstable_base_lr`` is the smallest rate above ``best_lr`` where any seed failed: diverged,
  unstable or learned nothing (``unstable_kind`` says which; the most severe when seeds
  differ), with ``p_unstable``, the share of its seeds that failed;
- a rate at or above ``best_lr`` where some seeds failed and others did not is *at the edge*
  of stability: one seed's verdict there could flip with the seed (below lr*, a seed that
  learned too little in time is slow, not unstable);
- a failure the rate does not explain is no learning-rate edge (:func:`rate_independent`):
  every rate over ``RATE_INDEPENDENT_SPAN`` (two decades) or more failing at the *same step*
  (one batch), or every rate's loss turning non-finite within ``FIRST_STEPS`` steps from a
  finite start (the data, the loss or the model's numerics). The trials that failed only
  there do not count against their rate, and the verdict names the step and the batch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from stabsweep.records import TrialStatus

if TYPE_CHECKING:
    import pandas as pd

MOSTLY_INFEASIBLE = 0.5
RATE_INDEPENDENT_SPAN = 100.0  # rates over two decades failing alike: not the rate's doing
FIRST_STEPS = 3  # a loss non-finite this early at every rate: numerics, not the rate
SEVERITY = (TrialStatus.DIVERGED, TrialStatus.LEARNED_NOTHING, TrialStatus.UNSTABLE)  # most severe first


def objective_column(trials: pd.DataFrame) -> str:
    """``best_eval_loss`` when the workload has eval data, else the final smoothed train loss."""
    if "best_eval_loss" in trials and trials["best_eval_loss"].notna().any():
        return "best_eval_loss"
    return "final_train_loss"


@dataclass
class LrFindings:
    best_lr: float | None
    unstable_base_lr: float | None
    infeasible_fraction: float
    objective: str
    best_objective: float | None = None
    best_trial_id: int | None = None
    unstable_trial_id: int | None = None
    unstable_kind: str | None = None  # diverged | unstable | learned_nothing
    unstable_reason: str | None = None
    p_unstable: float | None = None  # at the unstable base rate: the share of its seeds that failed
    edge_rates: list[float] = field(default_factory=list)  # rates where the seeds disagree
    rates: list[dict[str, Any]] = field(default_factory=list)  # one row per rate
    warnings: list[str] = field(default_factory=list)
    rate_independent: dict[str, Any] | None = None  # a failure the rate does not explain (see the module docstring)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rate_table(trials: pd.DataFrame, objective: str) -> pd.DataFrame:
    """One row per learning rate: its seeds, their statuses, ``p_unstable`` (the share of its
    judged seeds that diverged, were unstable or learned nothing) and the objective's mean,
    spread (standard deviation) and range over the feasible seeds."""
    import pandas as pd

    rows = []
    for lr, part in trials.groupby("lr", sort=True):
        statuses = part["status"].map(TrialStatus.of)
        judged = statuses[statuses != TrialStatus.FAILED]
        values = part.loc[statuses.map(lambda s: s.feasible), objective].dropna()
        rows.append(
            {
                "lr": float(lr),
                "seeds": len(part),
                **{status.value: int((statuses == status).sum()) for status in TrialStatus},
                "p_unstable": round(float(judged.map(lambda s: s.failing).mean()), 4) if len(judged) else None,
                "feasible": len(values) == len(part),
                "objective_mean": float(values.mean()) if len(values) else None,
                "objective_std": float(values.std(ddof=0)) if len(values) else None,
                "objective_min": float(values.min()) if len(values) else None,
                "objective_max": float(values.max()) if len(values) else None,
            }
        )
    return pd.DataFrame(rows)


def rate_independent(trials: pd.DataFrame, steps: pd.DataFrame | None = None) -> dict[str, Any] | None:
    """A failure the learning rate does not explain, or None (the module docstring's rule).

    ``same_step``: for some seed, the rates from the grid's lowest up over at least
    ``RATE_INDEPENDENT_SPAN`` all diverged, were unstable or had one batch spike above the
    divergence bar at one step (the batch there, since every rate of a seed sees the same
    batches). ``non_finite``: every trial, over rates as
    far apart, diverged with a non-finite loss within the first ``FIRST_STEPS`` steps, from a
    finite first loss (needs ``steps``, the per-step losses). Returns the kind, the step, the rates and the trials.
    """
    statuses = trials["status"].map(TrialStatus.of)
    judged = trials[statuses != TrialStatus.FAILED]
    if judged.empty or "instability_step" not in judged:
        return None
    if steps is not None and (judged["status"].map(TrialStatus.of) == TrialStatus.DIVERGED).all():
        found = _non_finite_start(judged, steps)
        if found is not None:
            return found
    for seed, part in judged.sort_values("lr").groupby("seed", sort=True):
        # where each trial failed, or else where one batch spiked above the divergence bar
        where = part["instability_step"]
        if "spike_step" in part:
            where = where.where(part["status"].map(lambda s: TrialStatus.of(s).instability), part["spike_step"])
        step = where.iloc[0]
        if step != step:  # NaN: the lowest rate neither failed nor spiked
            continue
        same = where.eq(step).to_numpy()
        run = int(np.argmin(same)) if not same.all() else len(same)  # from the lowest rate up
        lrs = part["lr"].to_numpy()[:run]
        if run and lrs[-1] / lrs[0] >= RATE_INDEPENDENT_SPAN:
            return {
                "kind": "same_step",
                "step": int(step),
                "seed": int(seed),
                "rates": [float(lr) for lr in lrs],
                "trial_ids": [int(t) for t in part["trial_id"].to_numpy()[:run]],
            }
    return None


def _non_finite_start(judged: pd.DataFrame, steps: pd.DataFrame) -> dict[str, Any] | None:
    rows = steps[steps["trial_id"].isin(judged["trial_id"])]
    last = rows.sort_values("step").groupby("trial_id").tail(1)
    early_nan = (last["step"] <= FIRST_STEPS) & ~np.isfinite(last["train_loss"].astype(float))
    starts = rows[rows["step"] == 1]["train_loss"].astype(float)
    lrs = sorted(judged["lr"])
    spans = len(lrs) > 1 and lrs[-1] / lrs[0] >= RATE_INDEPENDENT_SPAN
    if spans and len(last) == len(judged) and early_nan.all() and np.isfinite(starts).all():
        return {
            "kind": "non_finite",
            "step": int(last["step"].max()),
            "rates": [float(lr) for lr in lrs],
            "trial_ids": [int(t) for t in judged["trial_id"]],
        }
    return None


def describe_rate_independent(found: dict[str, Any], epoch_length: int | None = None) -> str:
    """The rate-independent failure in words: what failed where, and what it means."""
    low, high = found["rates"][0], found["rates"][-1]
    if found["kind"] == "non_finite":
        return (
            f"Every rate from {low:.3g} to {high:.3g} turned the loss non-finite by step {found['step']}, from a "
            "finite start: no rate trains, so the rate is not the cause. Look at the loss or the model's numerics "
            "(a division or log at 0, float16 overflow or an epsilon that rounds to 0) or the data: stabsweep "
            "doctor checks them."
        )
    step = found["step"]
    where = f"step {step}"
    if epoch_length:
        where += f" (batch {(step - 1) % epoch_length} of epoch {(step - 1) // epoch_length}, counting from 0)"
    return (
        f"Every rate from {low:.3g} to {high:.3g} failed or spiked at the same {where}: a failure that does not depend "
        "on the learning rate is not a learning-rate edge. The cause is that batch (an outlier in the data), "
        "the loss or the model's numerics: stabsweep doctor scans the batches."
    )


def lr_findings(
    trials: pd.DataFrame, steps: pd.DataFrame | None = None, data_spikes: set[tuple[int, int]] | None = None
) -> LrFindings:
    """Apply the selection rules to the sweep's trials (one row per rate and seed); ``steps``
    (the per-step records) lets the rate-independent rule see non-finite losses;
    ``data_spikes`` ((trial_id, step) of spikes the data caused, analysis/spikes.py) makes a
    trial unstable only there count as ok: its trouble was a batch, not its rate."""
    if data_spikes:
        trials = _forgive_data_spikes(trials, data_spikes)
    independent = rate_independent(trials, steps)
    if independent is not None and independent["kind"] == "same_step":
        # Trials that were unstable only at that batch trained otherwise: not their rate's failure.
        spiked = trials["trial_id"].isin(independent["trial_ids"]) & trials["status"].map(
            lambda s: TrialStatus.of(s) is TrialStatus.UNSTABLE
        )
        trials = trials.assign(status=trials["status"].where(~spiked, TrialStatus.OK.value))
    found = _findings(trials)
    if independent is not None:
        found.rate_independent = independent
        found.warnings = [w for w in found.warnings if not w.startswith(("most trials", "best_lr", "the best rate"))]
        if found.unstable_base_lr is not None and independent["kind"] == "non_finite":
            found.unstable_base_lr = None
    return found


def _forgive_data_spikes(trials: pd.DataFrame, data_spikes: set[tuple[int, int]]) -> pd.DataFrame:
    """An unstable trial whose instability was detected at (or within 2 steps after) a spike of
    the data's counts as ok."""
    near = {(t, s + d) for t, s in data_spikes for d in range(3)}

    def forgiven(row: Any) -> bool:
        step = row.get("instability_step")
        return (
            TrialStatus.of(row["status"]) is TrialStatus.UNSTABLE
            and step == step
            and step is not None
            and (int(row["trial_id"]), int(step)) in near
        )

    mask = trials.apply(forgiven, axis=1) if len(trials) else pd.Series(dtype=bool)
    return trials.assign(status=trials["status"].where(~mask, TrialStatus.OK.value)) if mask.any() else trials


def _findings(trials: pd.DataFrame) -> LrFindings:
    trials = trials.assign(status=trials["status"].map(TrialStatus.of)).sort_values(["lr", "trial_id"])
    judged = trials[trials["status"] != TrialStatus.FAILED]
    infeasible = judged["status"].map(lambda s: s.infeasible)
    fraction = float(infeasible.mean()) if len(judged) else 1.0
    objective = objective_column(trials)
    rates = rate_table(trials, objective)
    found = LrFindings(None, None, round(fraction, 4), objective, rates=_records(rates))
    mixed = [float(r.lr) for r in rates.itertuples() if r.p_unstable is not None and 0 < r.p_unstable < 1]

    failed = int((trials["status"] == TrialStatus.FAILED).sum())
    if failed:
        found.warnings.append(f"{failed} of {len(trials)} trials failed (raised); see the 'error' column of trials.csv")
    if fraction > MOSTLY_INFEASIBLE:
        found.warnings.append(
            f"most trials ({int(infeasible.sum())} of {len(judged)}) are infeasible: "
            "the grid is too high or the model/config is wrong (stabsweep doctor checks the model)"
        )
    feasible = rates[rates["feasible"]]
    if feasible.empty:
        found.edge_rates = mixed
        return found

    best = feasible.loc[feasible["objective_mean"].idxmin()]
    found.best_lr, found.best_objective = float(best["lr"]), float(best["objective_mean"])
    found.edge_rates = [lr for lr in mixed if lr >= found.best_lr]  # below lr*, a seed that learned less is no edge
    at_best = trials[trials["lr"] == found.best_lr]
    found.best_trial_id = int(at_best.loc[at_best[objective].idxmin(), "trial_id"])
    unstable_at_best = at_best[at_best["status"] == TrialStatus.UNSTABLE]
    if len(unstable_at_best):
        found.warnings.append(
            f"the best rate {found.best_lr:.3g} is itself unstable ({unstable_at_best.iloc[0]['reason']}): "
            "the case warmup and clipping fix first"
        )

    above = rates[(rates["lr"] > found.best_lr) & (rates["p_unstable"].fillna(0) > 0)]
    if not above.empty:
        rate = above.iloc[0]
        found.unstable_base_lr, found.p_unstable = float(rate["lr"]), float(rate["p_unstable"])
        failing = trials[(trials["lr"] == found.unstable_base_lr) & trials["status"].map(lambda s: s.failing)]
        worst = min(failing["status"], key=SEVERITY.index)
        first = failing[failing["status"] == worst].iloc[0]
        found.unstable_kind, found.unstable_trial_id = worst.value, int(first["trial_id"])
        found.unstable_reason = _failure_reason(first, len(failing), int(rate["seeds"]), worst)
        if worst is TrialStatus.UNSTABLE and int(rate["seeds"]) == 1:
            found.warnings.append(
                f"the unstable rate {found.unstable_base_lr:.3g} rests on one seed's trial that rose and recovered "
                "(it did not diverge): such an edge can move with the seed, or with float rounding alone; "
                "confirm it with --seeds 3"
            )

    grid = sorted(rates["lr"])
    if math.isclose(found.best_lr, grid[0]):
        found.warnings.append(f"best_lr {found.best_lr:.3g} is the lowest rate in the grid: extend the grid downwards")
    elif math.isclose(found.best_lr, grid[-1]):
        found.warnings.append(f"best_lr {found.best_lr:.3g} is the highest rate in the grid: extend the grid upwards")
    if found.unstable_base_lr is not None:
        next_rate = next(lr for lr in grid if lr > found.best_lr)
        if math.isclose(next_rate, found.unstable_base_lr):
            found.warnings.append(
                f"best_lr {found.best_lr:.3g} sits right below the unstable rate {found.unstable_base_lr:.3g}: "
                "instability is what limits the learning rate, the case warmup and clipping fix"
            )
    return found


def _failure_reason(trial: Any, failing: int, seeds: int, kind: TrialStatus) -> str:
    reason = str(trial["reason"])
    if seeds == 1:
        return reason
    worst = kind.value.replace("_", " ")
    return f"{failing} of {seeds} seeds failed, the worst {worst}: seed {int(trial['seed'])}: {reason}"


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain dicts, NaN as None (for summary.json)."""
    rows = frame.to_dict("records")
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows]


def verdict(found: LrFindings, epoch_length: int | None = None) -> str:
    """The lr sweep's finding in words."""
    if found.rate_independent is not None:
        text = describe_rate_independent(found.rate_independent, epoch_length)
        if found.best_lr is None:
            return text + " No rate of the grid trained either."
        rest = verdict(dataclasses.replace(found, rate_independent=None))
        return f"{text} Apart from it: {rest}"
    if found.best_lr is None:
        return "No learning rate in the grid trained: every trial was infeasible or failed."
    best = f"Best learning rate {found.best_lr:.3g} ({found.objective.replace('_', ' ')} {found.best_objective:.4g})"
    if found.unstable_base_lr is None:
        text = f"{best}; no rate above it diverged, was unstable or learned nothing: the grid stops short of it."
    else:
        kind = (found.unstable_kind or "").replace("_", " ")
        text = f"{best}; training becomes unstable at {found.unstable_base_lr:.3g} ({kind}: {found.unstable_reason})."
    if found.edge_rates:
        rates = ", ".join(f"{lr:.3g}" for lr in found.edge_rates)
        text += f" At the edge (the seeds disagree): {rates}."
    return text
