"""Clipping: a threshold from logged *unclipped* gradient norms, and what a clip sweep rescued.

The rules (docs/contract.md, "Detection rules"):

- the threshold is a percentile (p90 by default) of the logged unclipped norms;
- in the norm report, the clipped share is the share of those logged steps above the
  threshold: 1 − p/100 by construction, so it says nothing about aggressiveness. What can
  tell is the start of training, where norms are largest: when the threshold is below most
  early norms (more than ``aggressive_fraction`` of the first ``detect.early_fraction`` of
  steps above it), clipping there would clip most of the early steps;
- in a clip sweep, each trial's own ``clipped_fraction`` (its share of steps with
  ``clipped = true``) is measured on the clipped run itself. A trial that clipped more than
  ``aggressive_fraction`` of its steps is not clipping spikes but lowering the learning rate
  by another name: it is reported so and never recommended, whatever its status;
- a threshold *rescues* the rate when the unclipped baseline there diverged or was
  unstable, and every seed trained with the threshold is ok without clipping too often;
- the recommendation is the rescued threshold with the highest value: the least intrusive
  one, which clips only the largest spikes and leaves the rest of training as it was. Equal
  thresholds (two percentiles of the same value) are one choice; the higher percentile names it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from stabsweep.records import TrialStatus

REPORTED_PERCENTILES = (50, 75, 90, 95, 99)
AGGRESSIVE = "clipping on most steps acts like a lower learning rate: lower the rate instead"


@dataclass(frozen=True)
class NormReport:
    percentile: float
    threshold: float
    clipped_fraction: float  # share of the logged unclipped steps above the threshold
    early_clipped_fraction: float  # the same over the first early_fraction of the steps
    percentiles: dict[str, float]  # p50 ... p99 and max
    aggressive: bool  # the threshold is below most early norms
    steps_read: int
    non_finite_dropped: int

    def as_dict(self) -> dict:
        return asdict(self)


def norm_report(
    norms: np.ndarray, percentile: float = 90.0, aggressive_fraction: float = 0.5, early_fraction: float = 0.1
) -> NormReport:
    """Percentiles, threshold and clipped shares of the finite norms in ``norms`` (in step order)."""
    norms = np.asarray(norms, dtype=float)
    finite = norms[np.isfinite(norms)]
    if finite.size == 0:
        raise ValueError("no finite gradient norm to read")
    threshold = float(np.percentile(finite, percentile))
    clipped = float(np.mean(finite > threshold))
    early = finite[: max(1, math.ceil(early_fraction * finite.size))]
    early_clipped = float(np.mean(early > threshold))
    table = {f"p{p}": float(np.percentile(finite, p)) for p in REPORTED_PERCENTILES}
    table["max"] = float(finite.max())
    return NormReport(
        percentile,
        threshold,
        round(clipped, 6),
        round(early_clipped, 6),
        table,
        early_clipped > aggressive_fraction,
        int(finite.size),
        int(norms.size - finite.size),
    )


def spans_orders_of_magnitude(norms: np.ndarray, ratio: float = 100.0) -> bool:
    """Whether a log axis reads better: the norms span more than ``ratio`` from smallest to largest."""
    finite = norms[np.isfinite(norms) & (norms > 0)]
    return finite.size > 0 and finite.max() / finite.min() > ratio


def sweep_rows(trials: Any, aggressive_fraction: float) -> list[dict[str, Any]]:
    """One row per setting of a clip sweep (the unclipped baseline, then each threshold), over
    its seeds: statuses, mean clipped share and objective, and whether it rescued the rate."""
    trials = trials.assign(status=trials["status"].map(TrialStatus.of))
    baseline = trials[trials["phase"] == "baseline"]
    baseline_bad = baseline["status"].map(lambda s: s.instability).any()
    rows = []
    for (phase, percentile), part in trials.groupby(["phase", trials["clip_percentile"].fillna(-1)], sort=False):
        clipped = part["clipped_fraction"].dropna() if "clipped_fraction" in part else []
        fraction = float(np.mean(clipped)) if len(clipped) else None
        aggressive = fraction is not None and fraction > aggressive_fraction
        all_ok = bool((part["status"] == TrialStatus.OK).all())
        losses = part["best_eval_loss"].dropna()
        first = part.iloc[0]
        rows.append(
            {
                "trial_id": int(first["trial_id"]),
                "trial_ids": [int(t) for t in part["trial_id"]],
                "lr": float(first["lr"]),
                "clip_percentile": None if phase == "baseline" else float(percentile),
                "clip_threshold": None if phase == "baseline" else float(first["clip_threshold"]),
                "seeds": len(part),
                "status": _overall(part["status"]).value,
                "reason": str(first["reason"]) if len(part) == 1 else _statuses(part["status"]),
                "clipped_fraction": None if fraction is None else round(fraction, 6),
                "aggressive": aggressive,
                "best_eval_loss": float(losses.mean()) if len(losses) else None,
                "rescued": bool(phase == "clip" and baseline_bad and all_ok and not aggressive),
            }
        )
    rows.sort(key=lambda r: -1 if r["clip_threshold"] is None else r["clip_threshold"])
    return rows


def recommended(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The rescued threshold with the highest value (equal values: the higher percentile)."""
    rescued = [r for r in rows if r["rescued"]]
    return max(rescued, key=lambda r: (r["clip_threshold"], r["clip_percentile"])) if rescued else None


def _overall(statuses: Any) -> TrialStatus:
    """The status of a setting over its seeds: the most severe one."""
    order = (TrialStatus.FAILED, TrialStatus.DIVERGED, TrialStatus.LEARNED_NOTHING, TrialStatus.UNSTABLE)
    return next((s for s in order if (statuses == s).any()), TrialStatus.OK)


def _statuses(statuses: Any) -> str:
    counts = statuses.value_counts()
    return ", ".join(f"{int(n)} {status.value.replace('_', ' ')}" for status, n in counts.items())


def verdict(source: str, report: NormReport, rows: list[dict[str, Any]] | None) -> str:
    """The clip report in words: the threshold, the shares it clips, and what the sweep rescued."""
    text = (
        f"Read {report.steps_read} unclipped gradient norms of {source}. Clipping at "
        f"p{report.percentile:g} = {report.threshold:.4g} would have clipped {report.clipped_fraction:.1%} of "
        f"those logged steps, and {report.early_clipped_fraction:.0%} of the first ones."
    )
    if report.aggressive:
        text += (
            " That threshold is below most early norms: it would clip most of the start of training, acting like a"
            " lower learning rate there; lower the rate instead, or choose a higher percentile."
        )
    if rows is None:
        return text
    baseline = rows[0]
    lr = f"lr={baseline['lr']:.3g}"
    if not TrialStatus.of(baseline["status"]).instability:
        return text + f" Unclipped training at {lr} was {baseline['status']}: nothing to rescue."
    text += f" At {lr} ({baseline['status']} unclipped)"
    pick = recommended(rows)
    aggressive = [r for r in rows[1:] if r["aggressive"]]
    if pick is not None:
        text += (
            f", clipping at p{pick['clip_percentile']:g} = {pick['clip_threshold']:.4g} trained ok, clipping "
            f"{pick['clipped_fraction']:.1%} of its steps: the highest threshold that rescues the rate."
        )
    else:
        text += ", no threshold in the sweep made training ok without clipping most steps."
    if aggressive:
        names = ", ".join(f"p{r['clip_percentile']:g} ({r['clipped_fraction']:.0%} of steps)" for r in aggressive)
        text += f" Clipped too often to count: {names}; {AGGRESSIVE}."
    return text


def dominant_layers(layers: Any, norms: Any, threshold: float, top: int = 3) -> list[dict[str, Any]]:
    """The layers whose gradients make up most of the global norm at the logged steps where it
    was above ``threshold`` (the spikes clipping would cut): each layer's mean share of the
    squared global norm over those steps, the largest first."""
    above = norms.loc[norms["grad_norm"] > threshold, ["trial_id", "step"]]
    spikes = layers.merge(above, on=["trial_id", "step"])
    if spikes.empty:
        return []
    squared = spikes.assign(square=spikes["grad_norm"].astype(float) ** 2)
    totals = squared.groupby(["trial_id", "step"])["square"].transform("sum")
    shares = (squared["square"] / totals).groupby(squared["layer"]).mean().sort_values(ascending=False)
    steps = len(spikes.groupby(["trial_id", "step"]))
    return [
        {"layer": name, "share": round(float(share), 4), "steps": steps} for name, share in shares.head(top).items()
    ]
