"""The detection rules of docs/contract.md ("Detection rules"), as pure functions of a loss curve.

Order matters and mirrors severity: a trial that diverged is not also judged unstable, and
one that learned nothing is infeasible even if it never blew up. Every verdict carries a
reason in words, with the step, so a user can see which rule fired and why.

A batch loss is a noisy sample: with small batches or noisy labels it jumps up and down by
far more than the trend it follows. So every rule that reads a rise judges it against the
curve's own noise (``noise`` below):

- a loss above ``divergence_factor`` × initial must *stay* there for ``divergence_patience``
  more steps to be a divergence; one batch that jumps and falls back is a spike (a
  non-finite loss diverges at once);
- a *sustained* rise is read on the loss trend, the rolling median of the batch losses
  (which one heavy batch cannot move), and must exceed the trend's noise by
  ``noise_sigma`` × sqrt(2 ln(steps / span)) standard deviations: the typical largest
  excursion of a noisy curve grows with its length as that factor does, so the rule does
  not fire more often on long runs;
- a *spike* (one batch, or a burst shorter than the trend's window) counts when it is
  isolated: ``spike_ratio`` × larger than any other excursion of the curve. On a clean
  curve any clear spike is; on a noisy one, heavy batches are everywhere and none is.

"Initial" is the initial loss *level*: the median of the first ``INITIAL_BATCHES`` (3) batch
losses, between the first's and ``divergence_factor`` × the first's (:func:`initial_levels`),
since one batch's loss is a noisy sample.

Steps in reasons and in ``diverged_step`` are 1-based: step k is the k-th update.
"""

from __future__ import annotations

import dataclasses
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
    step: int | None = None  # where the instability (divergence, spike or rise) was detected
    spike_step: int | None = None  # a batch above the divergence bar that fell back at once (not a divergence)

    @property
    def instability(self) -> str | None:
        """ "early" or "mid-training" for a trial that diverged or was unstable, else None."""
        if not self.status.instability:
            return None
        return "early" if self.early else "mid-training"


INITIAL_BATCHES = 3  # the initial loss level: the median of the first this many batch losses


def initial_levels(losses: np.ndarray, cap: float) -> np.ndarray:
    """Per step (last axis): the initial loss level the rules compare with: the median of the
    batch losses so far, of the first ``INITIAL_BATCHES`` at most (from then on fixed), never
    below the first batch's loss and at most ``cap`` (``divergence_factor``) × it.

    One batch's loss is a noisy sample: four regression targets made a first batch's loss a
    tenth of the next ones', and every rate "diverged" at step 2 against it. The median of the
    first three, seen by a model that has barely moved, says the level training starts from.
    It is never below the first loss, the one loss no rate has touched (fast early learning
    lowers the next ones, and progress is measured from where training started), and at most
    ``cap`` × it, so a rate that explodes in those steps cannot drag the bar up with it (a loss
    48× the first at step 2 is still a divergence). At step 1 the level is the first loss, so
    the engine judges every step as it comes."""
    losses = np.asarray(losses, dtype=float)
    levels = np.empty_like(losses)
    k = min(INITIAL_BATCHES, losses.shape[-1])
    for t in range(k):
        levels[..., t] = np.median(losses[..., : t + 1], axis=-1)
    if losses.shape[-1] > k:
        levels[..., k:] = levels[..., k - 1 : k]
    first = losses[..., :1]
    return np.clip(levels, first, cap * first)


def levels_between(head: np.ndarray, start: int, end: int, cap: float) -> np.ndarray:
    """``initial_levels(losses, cap)[..., start:end]`` from the curve's first losses alone
    (``head``: at least ``min(end, INITIAL_BATCHES)`` of them): the level is fixed after
    ``INITIAL_BATCHES`` steps, so an engine judging a chunk need not copy the whole history."""
    levels = initial_levels(head[..., : min(end, INITIAL_BATCHES)], cap)
    return levels[..., np.minimum(np.arange(start, end), levels.shape[-1] - 1)]


def bad_loss(loss: float, initial_loss: float, factor: float) -> bool:
    """One loss as the divergence rule sees it: non-finite, or above ``factor × initial_loss``.
    Plain floats, so it costs next to nothing on the hot path."""
    return not math.isfinite(loss) or loss > factor * initial_loss


def divergence_steps(
    losses: np.ndarray, levels: np.ndarray | float, factor: float, offset: int = 0, patience: int = 0
) -> np.ndarray:
    """Per curve (last axis): the 1-based step at which a divergence is *decided*; 0 where none.

    A non-finite loss decides it at once. A loss above ``factor`` × its step's initial level
    (``levels``: :func:`initial_levels`, the same shape as ``losses``, or a number) decides it
    when it is the ``patience + 1``-th such loss in a row (a single batch that jumps and falls
    back is a spike, not a divergence). Called by the engine on each chunk of fresh losses
    (``offset`` = steps before the chunk; a chunk should start ``patience`` steps early so a
    run across its boundary is seen), for all trials of a batch at once.
    """
    losses = np.asarray(losses, dtype=float)
    finite = np.isfinite(losses)
    above = ~finite | (losses > factor * np.asarray(levels, dtype=float))
    decided = ~finite.copy()
    if patience == 0:
        decided |= above
    else:
        run = above.copy()
        for lag in range(1, patience + 1):  # above at t and at each of the `patience` steps before it
            shifted = np.zeros_like(above)
            shifted[..., lag:] = above[..., :-lag]
            run &= shifted
        decided |= run
    return np.where(decided.any(axis=-1), decided.argmax(axis=-1) + offset + 1, 0)


def divergence_step(
    losses: np.ndarray, levels: np.ndarray | float, factor: float, offset: int = 0, patience: int = 0
) -> int | None:
    """:func:`divergence_steps` of one curve, None where it did not diverge."""
    return int(divergence_steps(losses, levels, factor, offset, patience)) or None


def smoothed(losses: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average of the loss (pandas' ``ewm``), the curve the trend rules read."""
    import pandas as pd

    return pd.Series(losses).ewm(span=span, adjust=True).mean().to_numpy()


@dataclass(frozen=True)
class Noise:
    """A curve's trend and noise, per step: the median of the batch losses in a window of
    ``2·span + 1`` steps centred on the step (narrower near the ends, still centred, so the
    trend does not lag a falling curve there), and the robust local standard deviation of the
    batch losses (from their second differences, in the same window)."""

    trend: np.ndarray
    residuals: np.ndarray
    sigma: np.ndarray  # per step
    counts: np.ndarray  # the samples each step's median was taken over
    z: np.ndarray  # each batch's excess over the trend, in local standard deviations

    @property
    def trend_sigma(self) -> np.ndarray:
        """The standard deviation of the trend itself: a median of n samples has ≈ 1.2533 σ / √n
        (its asymptotic efficiency against the mean)."""
        return 1.2533 * self.sigma / np.sqrt(self.counts)

    @staticmethod
    def excess(steps: int, span: int) -> float:
        """sqrt(2 ln(steps / span)): how many standard deviations the largest of the curve's
        ~steps/span independent stretches of noise typically reaches (at least 1)."""
        return math.sqrt(2 * math.log(max(steps / span, math.e)))

    def isolated(self, t: int, span: int, ratio: float, bar: float) -> bool:
        """Whether the excursion at step index ``t``, in units of the local noise, is above ``bar``
        and ``ratio`` × larger than any other of the curve outside the ``span`` steps around it
        (a burst of a few batches is one excursion)."""
        z = self.z
        if not z[t] > bar:
            return False
        outside = np.concatenate([z[: max(0, t - span)], z[t + span + 1 :]])
        return bool(z[t] > ratio * max(float(np.max(outside)) if outside.size else 0.0, 0.0))


def noise(losses: np.ndarray, span: int) -> Noise:
    """The trend and noise of a finite loss curve (see :class:`Noise`). Hand-written: pandas'
    centred rolling windows shrink on one side only at the ends, which makes the trend lag."""
    import pandas as pd

    n = losses.size
    half = np.minimum(np.minimum(np.arange(n), np.arange(n)[::-1]), span)  # centred half-widths
    trend = pd.Series(losses).rolling(2 * span + 1, center=True, min_periods=1).median().to_numpy(copy=True)
    for t in np.flatnonzero(half < span):
        trend[t] = np.median(losses[t - half[t] : t + half[t] + 1])
    # The noise from second differences, l[t] − (l[t−1] + l[t+1]) / 2: a straight or gently
    # curved trend cancels out of them, near the ends too, and for independent noise their
    # standard deviation is √1.5 σ. Their median absolute value is robust to a spike.
    second = np.zeros(n)
    if n >= 3:
        second[1:-1] = losses[1:-1] - (losses[:-2] + losses[2:]) / 2
        second[0], second[-1] = second[1], second[-2]
    spread = pd.Series(np.abs(second)).rolling(2 * span + 1, center=True, min_periods=1).median().to_numpy()
    sigma = 1.4826 / math.sqrt(1.5) * spread
    residuals = losses - trend
    z = residuals / np.maximum(sigma, 1e-12 * (1 + np.abs(trend)))
    return Noise(trend, residuals, sigma, 2 * half + 1, z)


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
    if not math.isfinite(losses[0]):
        return Verdict(TrialStatus.DIVERGED, f"non-finite loss ({losses[0]}) at step 1", 1, early=True, step=1)
    levels = initial_levels(losses, detect.divergence_factor)
    decided = divergence_step(losses, levels, detect.divergence_factor, patience=detect.divergence_patience)
    if decided is not None:
        return _diverged(losses, levels, decided, detect, run_length)
    initial = float(levels[-1])
    verdict = _trained(losses, initial, detect, num_classes, run_length)
    spikes = _one_batch_spikes(losses, levels, detect.divergence_factor)
    if not spikes:
        return verdict
    first, factor = spikes[0], detect.divergence_factor
    if verdict.status is TrialStatus.OK and len(spikes) > 1:
        # Once is a batch (the data's, maybe); again is the training: no noise the rules call
        # noise reaches the divergence bar twice.
        steps = ", ".join(str(step) for step in spikes[:4]) + (" …" if len(spikes) > 4 else "")
        kind = "early" if first <= _early_window(run_length, detect) else "mid-training"
        why = (
            f"{kind} instability: {len(spikes)} batches spiked above {factor:g} × initial (at steps {steps}), "
            "each falling back at once"
        )
        return Verdict(TrialStatus.UNSTABLE, why, early=kind == "early", step=first, spike_step=first)
    note = (
        f"; one batch spiked at step {first} (loss {losses[first - 1]:.4g} > {factor:g} × initial) "
        "and fell back: a spike, not a divergence"
    )
    if len(spikes) > 1:
        note = f"; {len(spikes)} batches spiked above {factor:g} × initial, the first at step {first}"
    return dataclasses.replace(verdict, reason=verdict.reason + note, spike_step=first)


def _one_batch_spikes(losses: np.ndarray, levels: np.ndarray, factor: float) -> list[int]:
    """The (1-based) steps whose loss jumped above ``factor`` × the initial level and fell back
    below it before a divergence was decided (so the trial went on)."""
    above = np.isfinite(losses) & (losses > factor * levels)
    return [int(t) + 1 for t in np.flatnonzero(above)]


def _trained(
    losses: np.ndarray, initial: float, detect: DetectConfig, num_classes: int | None, run_length: int
) -> Verdict:
    """The verdict of a trial that did not diverge: learned nothing, unstable or ok."""
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

    found = noise(losses, detect.smoothing)
    events = [
        event
        for event in (
            _early_spike(losses, initial, found, detect, run_length),
            _sustained_rise(found, initial, detect, run_length),
            _spike_rise(losses, curve, found, initial, detect, run_length),
        )
        if event is not None
    ]
    if events:
        step, reason = min(events)
        early = step <= _early_window(run_length, detect)
        return Verdict(TrialStatus.UNSTABLE, reason, early=early, step=step)
    return Verdict(TrialStatus.OK, f"loss fell {initial:.4g} → {final:.4g}")


def _diverged(losses: np.ndarray, levels: np.ndarray, decided: int, detect: DetectConfig, run_length: int) -> Verdict:
    """The divergence decided at step ``decided``: it began at the first of its run of bad losses."""
    start, factor = decided, detect.divergence_factor
    while start > 1 and math.isfinite(losses[start - 1]) and bad_loss(losses[start - 2], levels[start - 2], factor):
        start -= 1
    value = float(losses[decided - 1])
    if not math.isfinite(value):
        why = f"non-finite loss ({value}) at step {decided}"
        if start < decided:
            why = f"loss {losses[start - 1]:.4g} > {detect.divergence_factor:g} × initial at step {start}, then {why}"
    else:
        why = f"loss {losses[start - 1]:.4g} > {detect.divergence_factor:g} × initial at step {start}"
        if decided > start:
            why += f" and still above it at step {decided}"
    early = start <= _early_window(run_length, detect)
    return Verdict(TrialStatus.DIVERGED, why, start, early=early, step=start)


def _early_spike(
    losses: np.ndarray, initial: float, found: Noise, detect: DetectConfig, run_length: int
) -> tuple[int, str] | None:
    """Early instability: a loss well above the initial one in the first steps, then recovery;
    either sustained (the trend itself above the bar) or an isolated spike, not noise."""
    head = losses[: _early_window(run_length, detect)]
    bar, spike_bar = detect.early_spike_factor * initial, _spike_bar(losses.size, detect)
    for t in np.flatnonzero(head > bar):
        t = int(t)
        if found.trend[t] > bar or found.isolated(t, detect.smoothing, detect.spike_ratio, spike_bar):
            return t + 1, (
                f"early instability: loss {head[t]:.4g} > {detect.early_spike_factor:g} × "
                f"initial {initial:.4g} at step {t + 1}, then recovered"
            )
    return None


def _sustained_rise(found: Noise, initial: float, detect: DetectConfig, run_length: int) -> tuple[int, str] | None:
    """A rise of the loss trend that gives back ``rise_fraction`` of the progress made, beyond
    its noise. Progress at step t is (initial − the trend's lowest point so far)."""
    trend = found.trend
    best = np.minimum.accumulate(trend)
    progress = initial - best
    rise = trend - best
    # Beyond noise: the trend now, less half the bar of its own noise, above the lowest the
    # trend was, plus half the bar of the noise there (a median of a few steps near the start
    # is noisy, and a running minimum picks its lowest draw).
    margin = detect.noise_sigma * Noise.excess(trend.size, detect.smoothing) * found.trend_sigma / 2
    beyond_noise = trend - margin > np.minimum.accumulate(trend + margin)
    meaningful = progress > detect.min_improvement * initial
    # At the end the trend is a median of the last few batches, a noisy read of a curve that
    # ends there; at the start the same narrow windows are what shows an early instability.
    settled = (found.counts > detect.smoothing) | (np.arange(trend.size) < trend.size // 2)
    hits = np.flatnonzero(meaningful & settled & (rise > detect.rise_fraction * progress) & beyond_noise)
    if hits.size == 0:
        return None
    t = int(hits[0])
    kind = "early" if t < _early_window(run_length, detect) else "mid-training"
    return t + 1, (
        f"{kind} instability: the loss trend (median of {2 * detect.smoothing + 1} steps) rose from {best[t]:.4g} to "
        f"{trend[t]:.4g} at step {t + 1}, giving back {rise[t] / progress[t]:.0%} of the progress"
    )


def _spike_rise(
    losses: np.ndarray, curve: np.ndarray, found: Noise, initial: float, detect: DetectConfig, run_length: int
) -> tuple[int, str] | None:
    """A spike that makes the smoothed loss give back ``rise_fraction`` of the progress made,
    and stands out from the curve's noise: isolated (``spike_ratio`` × any other excursion)."""
    best = np.minimum.accumulate(curve)
    progress = curve[0] - best
    rise = curve - best
    meaningful = progress > detect.min_improvement * initial
    span, bar, seen = detect.smoothing, _spike_bar(losses.size, detect), set()
    for t in np.flatnonzero(meaningful & (rise > detect.rise_fraction * progress)):
        t = int(t)
        window = slice(max(0, t - span), t + 1)
        k = window.start + int(np.argmax(found.residuals[window]))
        if k in seen:  # the same batch behind the rise at the step before: judged already
            continue
        seen.add(k)
        if found.isolated(k, span, detect.spike_ratio, bar):
            kind = "early" if k < _early_window(run_length, detect) else "mid-training"
            return k + 1, (
                f"{kind} instability: a spike to {losses[k]:.4g} at step {k + 1} ({losses[k] / found.trend[k]:.3g}× "
                f"the loss around it) took the smoothed loss from {best[t]:.4g} to {curve[t]:.4g}, "
                f"giving back {rise[t] / progress[t]:.0%} of the progress"
            )
    return None


def _spike_bar(steps: int, detect: DetectConfig) -> float:
    """How many local standard deviations a spike must reach: ``noise_sigma`` × the largest
    of ``steps`` Gaussian samples, sqrt(2 ln steps)."""
    return detect.noise_sigma * Noise.excess(steps, 1)


def _early_window(steps: int, detect: DetectConfig) -> int:
    return max(1, math.ceil(detect.early_fraction * steps))
