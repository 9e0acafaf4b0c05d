"""What a learning-rate range test found: where the loss falls fastest, where it blows up, and
the grid for the lr sweep.

The run (``stabsweep find``) grows the rate exponentially every step from ``find.min_lr`` to
``find.max_lr``. The rules here read its loss curve:

- the curve is smoothed by a bias-corrected exponential moving average (beta ``find.smoothing``);
- it *stops* at the first step whose smoothed loss is above ``find.divergence_factor`` × the
  lowest smoothed loss so far, or is not finite: ``divergence_lr`` is the rate there;
- the suggestions read the smoothed curve from ``skip_begin`` to the stop, finite values only,
  so a NaN is never picked:
  - ``steepest``: the steepest descent of the smoothed loss against log(rate) (torch-lr-finder's
    and Lightning's suggestion);
  - ``valley``: the middle (on the log-rate axis) of the descent into the lowest point: from
    where the smoothed loss last stood near its starting level (within a tenth of the whole
    drop) to its minimum. fastai's ``valley`` takes the longest decreasing subsequence, which
    on a noisy plateau at tiny rates can run along the plateau and suggest a rate that does
    nothing; the descent itself cannot;
  - ``minimum_div_10``: a tenth of the rate at the lowest smoothed loss (fastai's older rule);
- a curve that never dips (the lowest point is its start, flat or rising) has no suggestion.

No library does these for a curve stabsweep logged itself, hence the functions below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SUGGESTIONS = ("valley", "steepest", "minimum_div_10")
DIP = 0.01  # a dip: the lowest smoothed loss at least this share below where the curve starts
PLATEAU = 0.1  # the descent starts where the loss last stood within this share of the drop from its start


def smoothed(losses: np.ndarray, beta: float) -> np.ndarray:
    """Bias-corrected EMA: ``avg_t = beta·avg_{t-1} + (1-beta)·loss_t``, divided by ``1 - beta^(t+1)``;
    NaN from the first non-finite loss on."""
    out = np.full(len(losses), np.nan)
    average = 0.0
    for t, loss in enumerate(losses):
        if not math.isfinite(loss):
            break
        average = beta * average + (1 - beta) * loss
        out[t] = average / (1 - beta ** (t + 1))
    return out


def stop_index(curve: np.ndarray, factor: float) -> int | None:
    """The first step whose smoothed loss is non-finite or above ``factor`` × its lowest so far."""
    lowest = math.inf
    for t, value in enumerate(curve):
        if not math.isfinite(value) or value > factor * lowest:
            return t
        lowest = min(lowest, value)
    return None


@dataclass
class RangeFindings:
    suggestions: dict[str, float]  # name -> rate; empty when the curve has no dip
    divergence_lr: float | None  # where the stop rule fired, None if never
    stop_step: int | None  # 1-based
    curve: str  # "train" or "eval": which loss the suggestions read
    dip: bool
    lrs: np.ndarray = field(repr=False)
    smoothed: np.ndarray = field(repr=False)


def find_suggestions(
    lrs: np.ndarray, losses: np.ndarray, beta: float, factor: float, skip_begin: int, curve: str
) -> RangeFindings:
    """Smooth, stop, and suggest (see the module docstring), from one (median) curve."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    smooth = smoothed(losses, beta)
    stop = stop_index(smooth, factor)
    end = len(smooth) if stop is None else stop
    divergence = float(lrs[stop]) if stop is not None else None
    window = np.arange(min(skip_begin, max(end - 2, 0)), end)
    window = window[np.isfinite(smooth[window])]
    found = RangeFindings({}, divergence, None if stop is None else stop + 1, curve, False, lrs, smooth)
    if window.size < 3:
        return found
    values = smooth[window]
    found.dip = values.min() < (1 - DIP) * values[0]
    if not found.dip:
        return found
    log_lr = np.log10(lrs[window])
    slope = np.gradient(values, log_lr)
    found.suggestions["steepest"] = float(lrs[window[int(np.argmin(slope))]])
    start, bottom = _descent(values)
    found.suggestions["valley"] = float(lrs[window[(start + bottom) // 2]])
    found.suggestions["minimum_div_10"] = float(lrs[window[int(np.argmin(values))]] / 10)
    return found


def lowest_loss(found: RangeFindings) -> float | None:
    """The lowest finite smoothed loss before the stop: what the gate compares between range tests."""
    end = len(found.smoothed) if found.stop_step is None else found.stop_step - 1
    finite = found.smoothed[:end][np.isfinite(found.smoothed[:end])]
    return float(finite.min()) if finite.size else None


def _descent(values: np.ndarray) -> tuple[int, int]:
    """First and last index of the descent into the lowest value: it starts at the last point
    before the minimum that stood within ``PLATEAU`` of the drop from the start."""
    bottom = int(np.argmin(values))
    level = values[0] - PLATEAU * (values[0] - values[bottom])
    high = np.flatnonzero(values[: bottom + 1] >= level)
    return (int(high[-1]) if high.size else 0), bottom


def median_curve(curves: list[np.ndarray]) -> np.ndarray:
    """The median over seeds at each step, as far as every seed's curve goes (a seed that stopped
    early ends the median there: past it, the median would be of the survivors only)."""
    length = min(len(c) for c in curves)
    return np.median(np.stack([c[:length] for c in curves]), axis=0)


def lr_grid(suggested: float | None, divergence: float | None, min_lr: float, max_lr: float) -> dict[str, Any]:
    """The grid ``lr_sweep.lrs: auto`` sweeps: from 100× below the suggestion (where the loss
    falls too slowly, so the grid shows it rising again on the low side) to 3× past the
    range test's divergence (full training fails at lower rates than a range test, so the
    unstable base rate falls inside), two rates per decade (the quickstart's spacing)."""
    low = (suggested / 100) if suggested else min_lr
    high = (divergence * 3) if divergence else max_lr
    low, high = max(low, min_lr), max(high, low * 10)
    decades = math.log10(high / low)
    return {"min": float(f"{low:.3g}"), "max": float(f"{high:.3g}"), "num": max(5, round(2 * decades) + 1)}


def safe_suggestion(
    suggestions: dict[str, float], chosen: str, best_lr: float | None, unstable: float | None
) -> tuple[str, float] | None:
    """When the chosen suggestion is at or above ``unstable`` (where full training already
    failed in an lr sweep), the rate to point to instead: the highest suggestion below it,
    else the sweep's lr*; None when the chosen one is below it (or nothing is known)."""
    if unstable is None or chosen not in suggestions or suggestions[chosen] < unstable:
        return None
    below = {name: lr for name, lr in suggestions.items() if lr < unstable}
    if below:
        name = max(below, key=below.get)
        return name, below[name]
    return ("best_lr of the lr sweep", best_lr) if best_lr is not None else None


def against_full_training(divergence: float | None, unstable: float | None, top: float | None = None) -> str | None:
    """How the range test's divergence compares with the rate where full training became
    unstable; ``top``, the highest rate the test reached, when it never blew up."""
    if unstable is None:
        return None
    if divergence is None and top is not None and top < unstable:
        return (
            f"the range test stopped at {top:.3g}, below {unstable:.3g} where full training becomes unstable: "
            "raise find.max_lr to compare them"
        )
    if divergence is None:
        reached = f" up to {top:.3g}" if top is not None else ""
        return (
            f"the range test never blew up{reached}, yet full training is already unstable at {unstable:.3g}: "
            "the range test alone misses the edge"
        )
    ratio = divergence / unstable
    if ratio >= 1.5:
        return (
            f"the range test blows up at {divergence:.3g}; full training is already unstable at {unstable:.3g}: "
            f"the range test overestimates the stable range {ratio:.2g}×"
        )
    if ratio <= 1 / 1.5:
        return (
            f"the range test blows up at {divergence:.3g}, below {unstable:.3g} where full training becomes "
            f"unstable: it underestimates the stable range {1 / ratio:.2g}×"
        )
    return f"the range test blows up at {divergence:.3g}, close to {unstable:.3g} where full training becomes unstable"


def verdict(
    found: RangeFindings,
    chosen: str,
    comparison: str | None,
    unstable: float | None = None,
    best_lr: float | None = None,
    instead: tuple[str, float] | None = None,
) -> str:
    """The range test in words; ``instead`` (:func:`safe_suggestion`) when the chosen suggestion
    sits at or above ``unstable``, where the lr sweep in the same folder already failed."""
    if found.dip and instead is not None:
        lr = found.suggestions[chosen]
        text = (
            f"The range test's {chosen} suggestion {lr:.3g} is at or above {unstable:.3g}, where full training "
            "already became unstable in the lr sweep of this run folder: do not train at it (a range test spends "
            "one step at each rate, which overestimates what training tolerates)."
        )
        if best_lr is not None:
            text += f" The lr sweep's best rate is {best_lr:.3g}."
        if instead[1] != best_lr:
            text += f" The highest suggestion below {unstable:.3g} is {instead[0]} {instead[1]:.3g}."
        names = ", ".join(f"{name} {value:.3g}" for name, value in found.suggestions.items())
        text += f" (Suggestions: {names}.)"
    elif not found.dip:
        text = (
            f"The {found.curve} loss never dips over this range of rates (flat or rising): no suggestion. "
            "Widen the range (lower find.min_lr, raise find.max_lr) or give the test more steps."
        )
    else:
        names = ", ".join(f"{name} {lr:.3g}" for name, lr in found.suggestions.items())
        text = (
            f"Suggested learning rate {found.suggestions[chosen]:.3g} ({chosen}, from the {found.curve} loss; {names})."
        )
    if found.divergence_lr is not None:
        text += f" The loss blew up at {found.divergence_lr:.3g} (step {found.stop_step})."
    else:
        text += " The loss never blew up: the range may stop short of the instability."
    if comparison:
        text += f" Against the lr sweep: {comparison}."
    return text
