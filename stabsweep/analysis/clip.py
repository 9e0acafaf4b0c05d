"""Choosing a clipping threshold from logged *unclipped* gradient norms (docs/contract.md, "Detection rules").

The threshold is a percentile (p90 by default) of the norms; the clipped fraction is the
share of steps whose norm exceeds it (what clipping at that threshold would have touched).
Clipping more than half of all steps is not clipping spikes any more but lowering the
learning rate by another name, so it is reported as too aggressive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from stabsweep.records import TrialStatus

REPORTED_PERCENTILES = (50, 75, 90, 95, 99)


@dataclass(frozen=True)
class NormReport:
    percentile: float
    threshold: float
    clipped_fraction: float
    percentiles: dict[str, float]  # p50 ... p99 and max
    aggressive: bool
    steps_read: int
    non_finite_dropped: int

    def as_dict(self) -> dict:
        return asdict(self)


def norm_report(norms: np.ndarray, percentile: float = 90.0, aggressive_fraction: float = 0.5) -> NormReport:
    """Percentiles, threshold and clipped fraction of the finite norms in ``norms``."""
    norms = np.asarray(norms, dtype=float)
    finite = norms[np.isfinite(norms)]
    if finite.size == 0:
        raise ValueError("no finite gradient norm to read")
    threshold = float(np.percentile(finite, percentile))
    clipped = float(np.mean(finite > threshold))
    table = {f"p{p}": float(np.percentile(finite, p)) for p in REPORTED_PERCENTILES}
    table["max"] = float(finite.max())
    return NormReport(
        percentile,
        threshold,
        round(clipped, 6),
        table,
        clipped > aggressive_fraction,
        int(finite.size),
        int(norms.size - finite.size),
    )


def spans_orders_of_magnitude(norms: np.ndarray, ratio: float = 100.0) -> bool:
    """Whether a log axis reads better: the norms span more than ``ratio`` from smallest to largest."""
    finite = norms[np.isfinite(norms) & (norms > 0)]
    return finite.size > 0 and finite.max() / finite.min() > ratio


def sweep_rows(trials: Any) -> list[dict[str, Any]]:
    """One row per trial of a clip sweep; a clipped trial is rescued when it is ok where the
    unclipped baseline at the same rate diverged or was unstable."""
    baseline = trials[trials["phase"] == "baseline"].iloc[0]
    baseline_bad = TrialStatus.of(baseline["status"]) in (TrialStatus.DIVERGED, TrialStatus.UNSTABLE)
    rows = []
    for _, row in trials.iterrows():
        rescued = row["phase"] == "clip" and baseline_bad and TrialStatus.of(row["status"]) is TrialStatus.OK
        rows.append(
            {
                "trial_id": int(row["trial_id"]),
                "lr": float(row["lr"]),
                "clip_percentile": None if row["phase"] == "baseline" else float(row["clip_percentile"]),
                "clip_threshold": None if row["phase"] == "baseline" else float(row["clip_threshold"]),
                "status": str(row["status"]),
                "reason": row["reason"],
                "best_eval_loss": None if np.isnan(row["best_eval_loss"]) else float(row["best_eval_loss"]),
                "rescued": bool(rescued),
            }
        )
    return rows


def verdict(source: str, report: NormReport, sweep_rows: list[dict[str, Any]] | None) -> str:
    """The clip report in words: the threshold, the share it clips, and what the sweep rescued."""
    text = (
        f"Read {report.steps_read} unclipped gradient norms of {source}. "
        f"Clipping at p{report.percentile:g} = {report.threshold:.4g} would clip "
        f"{report.clipped_fraction:.1%} of steps."
    )
    if report.aggressive:
        text += " That is too aggressive: clipping most steps just lowers the learning rate; lower it instead."
    if sweep_rows is not None:
        baseline = sweep_rows[0]
        rescued = [r for r in sweep_rows if r["rescued"]]
        if TrialStatus.of(baseline["status"]) not in (TrialStatus.DIVERGED, TrialStatus.UNSTABLE):
            text += f" Unclipped training at lr={baseline['lr']:.3g} was {baseline['status']}: nothing to rescue."
        elif rescued:
            names = ", ".join(f"p{r['clip_percentile']:g} ({r['clip_threshold']:.3g})" for r in rescued)
            text += f" At lr={baseline['lr']:.3g} ({baseline['status']} unclipped), clipping at {names} trained ok."
        else:
            text += (
                f" At lr={baseline['lr']:.3g} ({baseline['status']} unclipped), no threshold in the sweep "
                "turned the trial ok."
            )
    return text
