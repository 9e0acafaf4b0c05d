"""Choosing a clipping threshold from logged *unclipped* gradient norms (DESIGN §5).

The threshold is a percentile (p90 by default) of the norms; the clipped fraction is the
share of steps whose norm exceeds it (what clipping at that threshold would have touched).
Clipping more than half of all steps is not clipping spikes any more but lowering the
learning rate by another name, so it is reported as too aggressive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

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
