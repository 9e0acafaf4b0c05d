"""The detection rules of docs/contract.md ("Detection rules"), as pure functions of a loss curve.

Order matters and mirrors severity: a trial that diverged is not also judged unstable, and
one that learned nothing is infeasible even if it never blew up. Every verdict carries a
reason in words, with the step, so a user can see which rule fired and why.

Steps in reasons and in ``diverged_step`` are 1-based: step k is the k-th update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stabsweep.config.schema import DetectConfig
from stabsweep.records import TrialStatus


@dataclass(frozen=True)
class Verdict:
    status: TrialStatus
    reason: str
    diverged_step: int | None = None
    early: bool = False  # the instability fell in the run's first early_fraction of steps (or it diverged there)

    @property
    def instability(self) -> str | None:
        """ "early" or "mid-training" for a trial that diverged or was unstable, else None."""
        if not self.status.instability:
            return None
        return "early" if self.early else "mid-training"


def diverged(loss: float, initial_loss: float, factor: float) -> bool:
    """The divergence rule for one fresh loss: non-finite, or above ``factor × initial_loss``.

    The per-step form of :func:`divergence_steps`, for a loop that reads one loss a step and
    must stop at once; plain floats, so it costs next to nothing on the hot path.
    """
    return not math.isfinite(loss) or loss > factor * initial_loss


def divergence_steps(
    losses: np.ndarray, initial_loss: np.ndarray | float, factor: float, offset: int = 0
) -> np.ndarray:
    """Per curve (last axis): the first (1-based) step whose loss is non-finite or above
    ``factor × initial_loss``; 0 where there is none.

    Called by the engine on each chunk of fresh losses (``offset`` = steps before the chunk),
    for all trials of a batch at once, so a trial stops at once.
    """
    bad = ~np.isfinite(losses) | (losses > factor * np.asarray(initial_loss)[..., None])
    return np.where(bad.any(axis=-1), bad.argmax(axis=-1) + offset + 1, 0)


def divergence_step(losses: np.ndarray, initial_loss: float, factor: float, offset: int = 0) -> int | None:
    """:func:`divergence_steps` of one curve, None where it did not diverge."""
    return int(divergence_steps(losses, initial_loss, factor, offset)) or None


def smoothed(losses: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average of the loss (pandas' ``ewm``), the curve the trend rules read."""
    import pandas as pd

    return pd.Series(losses).ewm(span=span, adjust=True).mean().to_numpy()


def judge(
    losses: np.ndarray, detect: DetectConfig, num_classes: int | None = None, run_length: int | None = None
) -> Verdict:
    """Classify one finished (or stopped) trial from its per-step training losses.

    ``run_length`` is the length of the run the losses are the start of (the early check
    trains the first steps of a longer run): "early" means its first ``early_fraction``.
    """
    run_length = run_length or losses.size
    if losses.size == 0:
        return Verdict(TrialStatus.FAILED, "no training step ran")
    initial = float(losses[0])
    if not math.isfinite(initial):
        return Verdict(TrialStatus.DIVERGED, f"non-finite loss ({initial}) at step 1", 1, early=True)
    step = divergence_step(losses, initial, detect.divergence_factor)
    if step is not None:
        value = float(losses[step - 1])
        why = (
            f"non-finite loss ({value}) at step {step}"
            if not math.isfinite(value)
            else f"loss {value:.4g} > {detect.divergence_factor:g} × initial at step {step}"
        )
        return Verdict(TrialStatus.DIVERGED, why, step, early=step <= _early_window(run_length, detect))

    curve = smoothed(losses, detect.smoothing)
    final = float(curve[-1])
    if final > (1 - detect.min_improvement) * initial:
        return Verdict(
            TrialStatus.LEARNED_NOTHING,
            f"final smoothed loss {final:.4g} not {detect.min_improvement:.0%} below initial {initial:.4g}",
        )
    if num_classes and num_classes > 1:
        chance = math.log(num_classes)
        if final >= (1 - detect.chance_tolerance) * chance:
            where = "above" if final > (1 + detect.chance_tolerance) * chance else "at"
            return Verdict(
                TrialStatus.LEARNED_NOTHING,
                f"final smoothed loss {final:.4g} {where} chance level ln {num_classes} = {chance:.4g}",
            )

    spike = _early_spike(losses, initial, detect, run_length)
    if spike:
        return Verdict(TrialStatus.UNSTABLE, spike, early=True)
    rise = _mid_training_rise(curve, initial, detect, run_length)
    if rise:
        return Verdict(TrialStatus.UNSTABLE, rise, early=rise.startswith("early"))
    return Verdict(TrialStatus.OK, f"loss fell {initial:.4g} → {final:.4g}")


def _early_spike(losses: np.ndarray, initial: float, detect: DetectConfig, run_length: int) -> str | None:
    """Early instability: a loss well above the initial one in the first steps, then recovery."""
    head = losses[: _early_window(run_length, detect)]
    peak = int(np.argmax(head))
    if head[peak] > detect.early_spike_factor * initial:
        return (
            f"early instability: loss {head[peak]:.4g} > {detect.early_spike_factor:g} × "
            f"initial {initial:.4g} at step {peak + 1}, then recovered"
        )
    return None


def _mid_training_rise(curve: np.ndarray, initial: float, detect: DetectConfig, run_length: int) -> str | None:
    """A rise of the smoothed loss that gives back a share of the progress made.

    Progress at step t is (initial − best smoothed loss so far); the rule fires when the
    smoothed loss climbs ``rise_fraction`` of that progress above its best, once progress
    itself is meaningful (``min_improvement`` of the initial loss). A rise inside the early
    window is reported as early instability, later ones as mid-training instability.
    """
    best = np.minimum.accumulate(curve)
    progress = curve[0] - best
    rise = curve - best
    meaningful = progress > detect.min_improvement * initial
    hits = np.flatnonzero(meaningful & (rise > detect.rise_fraction * progress))
    if hits.size == 0:
        return None
    t = int(hits[0])
    kind = "early" if t < _early_window(run_length, detect) else "mid-training"
    return (
        f"{kind} instability: smoothed loss rose from {best[t]:.4g} to {curve[t]:.4g} "
        f"at step {t + 1}, giving back {rise[t] / progress[t]:.0%} of the progress"
    )


def _early_window(steps: int, detect: DetectConfig) -> int:
    return max(1, math.ceil(detect.early_fraction * steps))
