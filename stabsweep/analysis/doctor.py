"""The doctor's checks: is the model even correct, before any sweep? (docs/contract.md, "Detection rules")

Each check turns one measurement into a status: ``pass``, ``warn`` or ``fail``, with the value
measured, what was expected, and one line of advice. A check that does not apply to the
workload (no classifier, no ReLU) passes with "not applicable". The thresholds and why:

- ``initial_loss``: a freshly initialised classifier's logits are small and nearly equal, so its
  loss is within a few percent of ln C. More than 25% off means the logits are already
  confident (a scaled init, a temperature); more than 100% off (twice ln C) means they are
  badly scaled. A regressor's default-initialised output is O(1), so its loss is near that of
  predicting the target mean; 4× that is suspect, 100× is broken.
- ``overfit_one_batch``: any model worth training drives the loss on one fixed batch to a
  small share of where it started within a few hundred steps: below 10% passes, below 50%
  warns (slow, or little capacity), above that fails.
- ``dead_units``: a ReLU unit that is zero for every example of a batch passes no gradient:
  more than 20% of a layer warns, more than 60% fails.
- ``update_ratio``: ‖Δw‖/‖w‖ per step near 1e-3 is the usual healthy pace for a weight matrix
  (Karpathy's rule of thumb; biases and norm gains are left out, their ratios say little).
  More than 1.5 decades away warns (above: too large, unstable; below: too
  small, not learning); more than 3 decades fails.
- ``layer_grad_norms``: the first and last layers' gradient norms at init within 100× of each
  other pass; beyond 100× warns, beyond 10,000× fails (vanishing or exploding gradients).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from stabsweep.config.names import DOCTOR_CHECKS

CHECKS = DOCTOR_CHECKS
PASS, WARN, FAIL = "pass", "warn", "fail"
NOT_APPLICABLE = "not applicable"


@dataclass
class Check:
    name: str
    status: str  # pass | warn | fail
    measured: str
    expected: str
    advice: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def data_finite(where: str | None) -> Check:
    if where is None:
        return Check("data_finite", PASS, "every value finite", "no NaN or inf", "")
    advice = "clean the data or its transform"
    return Check("data_finite", FAIL, f"non-finite value at {where}", "no NaN or inf", advice)


def labels_in_range(classes: int | None, low: int, high: int, bad: str | None) -> Check:
    expected = f"targets in [0, {classes})" if classes else "targets in [0, C)"
    if classes is None:
        return Check("labels_in_range", PASS, NOT_APPLICABLE + " (not a classifier)", expected, "")
    measured = f"targets from {low} to {high}"
    if bad:
        advice = "the head's width and the labels disagree"
        return Check("labels_in_range", FAIL, f"{measured}; {bad}", expected, advice)
    return Check("labels_in_range", PASS, measured, expected, "")


def initial_loss(loss: float, reference: float | None, reference_name: str | None, classifier: bool) -> Check:
    if reference is None or not math.isfinite(loss):
        if not math.isfinite(loss):
            return Check("initial_loss", FAIL, f"{loss}", "a finite loss", "the loss is not finite at init")
        return Check("initial_loss", PASS, f"{loss:.4g} ({NOT_APPLICABLE}: no reference)", "–", "")
    if classifier:
        off = abs(loss - reference) / reference
        expected = f"≈ {reference_name} = {reference:.4g}"
        status = FAIL if off > 1.0 else WARN if off > 0.25 else PASS
        advice = "" if status == PASS else "the logits are scaled wrong at init: check the last layer's init and scale"
        return Check("initial_loss", status, f"{loss:.4g} ({off:.0%} off)", expected, advice)
    ratio = loss / max(reference, 1e-12)
    status = FAIL if ratio > 100 else WARN if ratio > 4 else PASS
    advice = "" if status == PASS else "the outputs are far off the targets' scale: normalise targets or the head"
    return Check("initial_loss", status, f"{loss:.4g} ({ratio:.2g}× {reference_name})", f"≲ {reference:.4g}", advice)


def overfit_one_batch(losses: np.ndarray, lr: float, steps: int, diverged: bool) -> Check:
    expected = f"below 10% of the start in {steps} steps"
    if diverged or not np.isfinite(losses).all():
        return Check("overfit_one_batch", FAIL, f"diverged at lr={lr:.3g}", expected, "lower the rate (--lr)")
    start, end = float(losses[0]), float(np.mean(losses[-10:]))
    share = end / max(start, 1e-12)
    status = PASS if share < 0.1 else WARN if share < 0.5 else FAIL
    advice = "" if status == PASS else "a bug in the model or its loss, no capacity, or a rate far off (--lr)"
    return Check("overfit_one_batch", status, f"{start:.4g} → {end:.4g} ({share:.1%}) at lr={lr:.3g}", expected, advice)


def gradient_check(results: list[Any]) -> Check:
    expected = "autograd = finite differences"
    if not results:
        return Check("gradient_check", PASS, NOT_APPLICABLE + " (no trainable parameter)", expected, "")
    wrong = [r for r in results if not r.passed]
    kinds = ", ".join(sorted({r.kind for r in results}))
    if not wrong:
        count = f"{len(results)} module type{'s' * (len(results) > 1)}"
        measured = f"{count} ({kinds}): {results[0].detail}"
        return Check("gradient_check", PASS, measured, expected, "")
    first = wrong[0]
    measured = f"{first.kind} at '{first.module}' ({first.parameter}): {first.detail}"
    advice = "a hand-written backward or a non-differentiable op is wrong"
    return Check("gradient_check", FAIL, measured, expected, advice)


def dead_units(at_init: dict[str, float], after: dict[str, float] | None) -> Check:
    expected = "under 20% of a layer's units"
    if not at_init:
        return Check("dead_units", PASS, NOT_APPLICABLE + " (no ReLU module)", expected, "")
    worst_name, worst = max({**at_init, **(after or {})}.items(), key=lambda kv: kv[1])
    when = "after overfitting" if after and after.get(worst_name, 0) >= at_init.get(worst_name, 0) else "at init"
    status = FAIL if worst > 0.6 else WARN if worst > 0.2 else PASS
    advice = "" if status == PASS else "units that never fire learn nothing: a lower rate, another init, or LeakyReLU"
    return Check("dead_units", status, f"{worst:.0%} of '{worst_name}' {when}", expected, advice)


def update_ratio(ratios: dict[str, float], lr: float) -> Check:
    expected = "‖Δw‖/‖w‖ ≈ 1e-3 per step"
    finite = {name: r for name, r in ratios.items() if math.isfinite(r) and r > 0}
    if not finite:
        return Check("update_ratio", PASS, NOT_APPLICABLE + " (no weights moved)", expected, "")
    distance = {name: abs(math.log10(r) + 3) for name, r in finite.items()}
    name = max(distance, key=distance.get)
    status = FAIL if distance[name] > 3 else WARN if distance[name] > 1.5 else PASS
    direction = "too large: unstable" if finite[name] > 1e-3 else "too small: not learning"
    advice = "" if status == PASS else f"{direction} at lr={lr:.3g}"
    return Check("update_ratio", status, f"{finite[name]:.2g} for '{name}' (the farthest)", expected, advice)


def layer_grad_norms(norms: dict[str, float]) -> Check:
    expected = "first and last layers within 100×"
    weights = [(name, n) for name, n in norms.items() if math.isfinite(n)]
    if len(weights) < 2:
        return Check("layer_grad_norms", PASS, NOT_APPLICABLE + " (one layer)", expected, "")
    (first, a), (last, b) = weights[0], weights[-1]
    ratio = max(a, 1e-30) / max(b, 1e-30)
    spread = max(ratio, 1 / ratio)
    status = FAIL if spread > 1e4 else WARN if spread > 100 else PASS
    kind = "vanishing towards the input" if ratio < 1 else "exploding towards the input"
    advice = "" if status == PASS else f"{kind}: normalisation, residual connections or another init"
    return Check("layer_grad_norms", status, f"'{first}' {a:.2g} vs '{last}' {b:.2g} ({spread:.2g}×)", expected, advice)


def crashed(name: str, error: BaseException, where: str) -> Check:
    """A check the user's model crashed in: that check fails with the error; the others still run."""
    return Check(name, FAIL, f"raised {type(error).__name__}: {error} (at {where})"[:300], "no error", "fix the model")


def verdict(checks: list[Check]) -> str:
    failed = [c.name for c in checks if c.status == FAIL]
    warned = [c.name for c in checks if c.status == WARN]
    if failed:
        return (
            f"{len(failed)} check{'s' * (len(failed) > 1)} failed ({', '.join(failed)}): fix these before sweeping; "
            "an instability found now could be this bug."
        )
    if warned:
        return f"No check failed; {', '.join(warned)} warned: read the advice, then sweep."
    return "Every check passed: the model looks correct. Sweep the learning rate next."
