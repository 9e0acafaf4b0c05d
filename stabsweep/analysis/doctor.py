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
- ``batch_outliers``: one training batch's loss at init ``doctor.outlier_factor`` (10) × the
  median batch's or more, or not finite, fails: every rate meets that batch at the same step,
  so a sweep fails there at every rate (the data's fault, not the rate's).
- ``finite_gradients``: a gradient that is NaN or inf while the loss is finite fails: a sqrt,
  log or division at 0 in the forward (or a zero-norm normalisation) gives a finite loss and a
  non-finite gradient, and no learning rate fixes it.
- ``update_ratio`` is judged per optimizer: SGD's step is lr × the gradient, and 1e-3 is its
  healthy pace (1.5 decades off warns); an adaptive optimizer's (Adam, RMSprop, Adagrad) is
  about lr per element by design, so its ‖Δw‖/‖w‖ is near lr / rms(w), and a small-init
  embedding at 1e-3 moves 2-4% a step, as it should: it warns only 2 decades off. Either fails
  3 decades off. A non-finite ratio fails (the optimizer's step is named when it turned finite
  weights and gradients into NaN). When weight decay dominates the update (‖Δw‖/‖w‖ within 2×
  of lr × weight_decay), the advice names it.

A check that fails is retried where the retry can tell the cause: ``overfit_one_batch`` at a
rate 100× lower (one batch: cheap). The advice follows what that showed: "lower the rate"
only when the lower rate fits; the same failure there is a bug in the model, loss or data.
A check that raises the same error as an earlier one, or any error after a data check failed
(the data's fault makes it raise), is ``not run`` because of that one: one fault, one failure.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from stabsweep.config.names import DOCTOR_CHECKS

CHECKS = DOCTOR_CHECKS
PASS, WARN, FAIL, NOT_RUN = "pass", "warn", "fail", "not run"
NOT_APPLICABLE = "not applicable"
ADAPTIVE = ("adam", "adamw", "nadam", "amsgrad", "rmsprop", "adagrad")  # a step of about lr per element


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


def overfit_share(losses: np.ndarray, diverged: bool) -> float:
    """Where a run on one batch ended, as a share of where it started (inf when it diverged)."""
    if diverged or not np.isfinite(losses).all():
        return math.inf
    return float(np.mean(losses[-10:])) / max(float(losses[0]), 1e-12)


def overfit_one_batch(
    losses: np.ndarray,
    lr: float,
    steps: int,
    diverged: bool,
    retry: tuple[float, float] | None = None,
    weight_decay: str | None = None,
) -> Check:
    """``retry``: (the lower rate, its share) when the check failed and was retried 100× lower;
    ``weight_decay``: the words of update_ratio when weight decay dominates the update."""
    expected = f"below 10% of the start in {steps} steps"
    share = overfit_share(losses, diverged)
    if math.isinf(share):
        measured = f"diverged at lr={lr:.3g}"
    else:
        measured = f"{float(losses[0]):.4g} → {float(np.mean(losses[-10:])):.4g} ({share:.1%}) at lr={lr:.3g}"
    status = PASS if share < 0.1 else WARN if share < 0.5 else FAIL
    advice = ""
    if status != PASS:
        advice = "a bug in the model or its loss, no capacity, or a rate far off (--lr)"
        if retry is not None:
            low, low_share = retry
            if low_share < 0.5:
                advice = f"lower the rate: at {low:.3g} ({low_share:.1%} of the start) it fits"
            else:
                again = "diverged too" if math.isinf(low_share) else f"ended at {low_share:.1%} of the start"
                advice = f"the same failure at lr={low:.3g} ({again}): a bug in the model, loss or data, not the rate"
        if weight_decay:
            advice += f"; {weight_decay}"
    return Check("overfit_one_batch", status, measured, expected, advice)


def outlier_batches(losses: list[float], factor: float) -> list[int]:
    """The indices of the batches whose loss at init is ``factor`` × the median batch's or more,
    or not finite (doctor's batch_outliers, and a spike's attribution in analysis/spikes.py)."""
    values = np.asarray(losses, dtype=float)
    finite = values[np.isfinite(values)]
    median = float(np.median(finite)) if finite.size else math.nan
    return [i for i, v in enumerate(values) if not math.isfinite(v) or (median > 0 and v >= factor * median)]


def batch_outliers(losses: list[float], total: int | None, seconds: float, stopped: str | None, factor: float) -> Check:
    """The batches whose loss at init is ``factor`` × the median batch's or more, or not finite."""
    expected = f"every batch's loss at init under {factor:g}× the median batch's"
    if not losses:
        return Check("batch_outliers", PASS, NOT_APPLICABLE + " (no training batch)", expected, "")
    values = np.asarray(losses, dtype=float)
    finite = values[np.isfinite(values)]
    median = float(np.median(finite)) if finite.size else math.nan
    scanned = f"{len(losses)} of {total} batches" if total else f"{len(losses)} batches"
    scanned += f" in {seconds:.1f} s" + (f" (stopped after {stopped})" if stopped else "")
    bad = outlier_batches(losses, factor)
    if not bad:
        top = float(finite.max() / median) if finite.size and median > 0 else math.nan
        return Check("batch_outliers", PASS, f"{scanned}; the largest loss is {top:.3g}× the median", expected, "")
    named = ", ".join(_outlier(i, values[i], median) for i in bad[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    advice = (
        "inspect those samples (inputs far off the others' scale, corrupt labels, a unit mistake): every rate "
        "meets that batch at the same step, so a sweep fails there at every rate"
    )
    return Check("batch_outliers", FAIL, f"{scanned}, counting from 0 in epoch 0: {named}{more}", expected, advice)


def _outlier(index: int, loss: float, median: float) -> str:
    if not math.isfinite(loss):
        return f"batch {index} (loss {loss})"
    return f"batch {index} (loss {loss:.4g}, {loss / median:.3g}× the median {median:.4g})"


def finite_gradients(found: dict[str, Any] | None, steps: int) -> Check:
    """``found``: the first step whose loss was finite and whose gradients were not, its loss and
    the parameters whose gradients were not finite."""
    expected = "finite gradients wherever the loss is finite"
    if found is None:
        return Check("finite_gradients", PASS, f"finite over the first {steps} steps", expected, "")
    names = ", ".join(f"'{n}'" for n in found["parameters"][:4])
    more = f" and {len(found['parameters']) - 4} more" if len(found["parameters"]) > 4 else ""
    measured = (
        f"non-finite gradients of {names}{more} at step {found['step']} while the loss was still finite "
        f"({found['loss']:.4g})"
    )
    advice = (
        "a bug in the forward (a sqrt, log or division at 0, a normalisation of a zero vector), not the rate: "
        "no learning rate fixes it"
    )
    return Check("finite_gradients", FAIL, measured, expected, advice)


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


def weight_decay_dominates(ratios: dict[str, float], lr: float, weight_decay: float) -> str | None:
    """Words for the advice when weight decay dominates the update: the median ‖Δw‖/‖w‖ within
    2× of lr × weight_decay (the decay's own pace), else None."""
    finite = [r for r in ratios.values() if math.isfinite(r) and r > 0]
    if weight_decay <= 0 or not finite:
        return None
    pace = lr * weight_decay
    median = float(np.median(finite))
    if pace / 2 <= median <= pace * 2:
        return (
            f"weight decay dominates the update (‖Δw‖/‖w‖ {median:.2g} ≈ lr × weight_decay = {pace:.2g}): the "
            "gradient moves the weights less than the decay shrinks them; lower weight_decay"
        )
    return None


def update_ratio(
    ratios: dict[str, float],
    lr: float,
    optimizer: str = "sgd",
    weight_rms: dict[str, float] | None = None,
    weight_decay: str | None = None,
    broken_by_step: list[str] | None = None,
) -> Check:
    """SGD-family steps against the 1e-3 pace; adaptive ones against lr / rms(w), their pace by
    design (``weight_rms``: each tensor's root-mean-square weight before the first step).
    ``broken_by_step``: tensors whose finite weights and gradients the optimizer's step made
    non-finite."""
    bad = [name for name, r in ratios.items() if not math.isfinite(r) and weight_rms and weight_rms.get(name, 0) > 0]
    adaptive = optimizer in ADAPTIVE and weight_rms
    expected = (
        "‖Δw‖/‖w‖ within 2 decades of 1e-3 per step (an adaptive step moves about lr per element)"
        if adaptive
        else "‖Δw‖/‖w‖ ≈ 1e-3 per step"
    )
    if bad:
        names = ", ".join(f"'{n}'" for n in bad[:4])
        if broken_by_step:
            measured = f"not finite for {names}: the optimizer's step turned finite weights and gradients into NaN"
            advice = (
                "the optimizer's own numerics, not the rate (in float16, Adam's eps of 1e-8 rounds to 0 and a tiny "
                "second moment to 0 too: 0/0; use eps ≥ 1e-4, or keep the weights in float32 with autocast)"
            )
            return Check("update_ratio", FAIL, measured, expected, advice)
        measured = f"not finite for {names}: their weights or gradients are NaN or inf"
        advice = "see finite_gradients: a non-finite value in the forward or backward, not the rate"
        return Check("update_ratio", FAIL, measured, expected, advice)
    finite = {name: r for name, r in ratios.items() if math.isfinite(r) and r > 0}
    if not finite:
        return Check("update_ratio", PASS, NOT_APPLICABLE + " (no weights moved)", expected, "")
    # An adaptive step's pace, lr / rms(w), is far from 1e-3 by design on small-init tensors
    # (a GPT-2 embedding at lr 1e-3 moves 2-4% a step): it gets half a decade more before a warning.
    distance = {name: abs(math.log10(r / 1e-3)) for name, r in finite.items()}
    name = max(distance, key=distance.get)
    warn_at = 2.0 if adaptive else 1.5
    status = FAIL if distance[name] > 3 else WARN if distance[name] > warn_at else PASS
    direction = "too large: unstable" if finite[name] > 1e-3 else "too small: not learning"
    advice = "" if status == PASS else f"{direction} at lr={lr:.3g}"
    if weight_decay:
        advice = f"{advice}; {weight_decay}" if advice else weight_decay
    measured = f"{finite[name]:.2g} for '{name}' (the farthest"
    pace = lr / weight_rms[name] if adaptive and weight_rms.get(name, 0) > 0 else None
    measured += f"; an adaptive step's pace there, lr / rms(w), is {pace:.2g})" if pace else ")"
    return Check("update_ratio", status, measured, expected, advice)


def layer_grad_norms(norms: dict[str, float]) -> Check:
    expected = "first and last layers within 100×"
    broken = [name for name, n in norms.items() if not math.isfinite(n)]
    if broken:
        names = ", ".join(f"'{n}'" for n in broken[:4])
        return Check(
            "layer_grad_norms",
            FAIL,
            f"not finite for {names} at the first step",
            expected,
            "see finite_gradients: a non-finite value in the forward or backward, not the rate",
        )
    weights = list(norms.items())
    if len(weights) < 2:
        return Check("layer_grad_norms", PASS, NOT_APPLICABLE + " (one weight matrix)", expected, "")
    (first, a), (last, b) = weights[0], weights[-1]
    ratio = max(a, 1e-30) / max(b, 1e-30)
    spread = max(ratio, 1 / ratio)
    status = FAIL if spread > 1e4 else WARN if spread > 100 else PASS
    kind = "vanishing towards the input" if ratio < 1 else "exploding towards the input"
    advice = "" if status == PASS else f"{kind}: normalisation, residual connections or another init"
    return Check("layer_grad_norms", status, f"'{first}' {a:.2g} vs '{last}' {b:.2g} ({spread:.2g}×)", expected, advice)


def crashed(name: str, error: str, where: str) -> Check:
    """A check the user's model crashed in: that check fails with the error; the others still run."""
    return Check(name, FAIL, f"raised {error} (at {where})"[:300], "no error", "fix the model")


def not_run(name: str, because: str, detail: str) -> Check:
    """A check that failed by a fault another check already names (it raised the same error,
    or its measurement rests on what that check found broken): one fault, one failure."""
    return Check(name, NOT_RUN, f"{because} ({detail})"[:300], "–", "")


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
