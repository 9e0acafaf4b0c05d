"""The optimizer's stability threshold on sharpness, and what a measured sharpness implies.

On a quadratic with curvature λ (the top eigenvalue of the Hessian, the *sharpness*), gradient
descent at rate η converges only while λ·η < 2: the step's error factor 1 − ηλ must stay in
(−1, 1). Each optimizer family has its own bound, from the roots of its update's
characteristic polynomial on that quadratic (the boundary is the root at −1):

* SGD: λ < 2/η.
* heavy-ball momentum β (torch's SGD, dampening τ: an effective rate (1 − τ)η):
  z² − (1 + β − (1−τ)ηλ)z + β = 0 → λ < (2 + 2β)/((1 − τ)η).
* Nesterov (torch's formulation): z² − (1 + β − ηλ(1 + β))z + β − ηλβ = 0 → λ < (2 + 2β)/((1 + 2β)η).
* Adam/AdamW: the *preconditioned* sharpness, of P⁻¹H with P = (1 − β₁ᵗ)·diag(√v̂ + ε), settles
  at (2 + 2β₁)/((1 − β₁)η), 38/η for β₁ = 0.9 (Cohen et al. 2022, "Adaptive gradient methods
  at the edge of stability"); RMSprop (momentum μ) and Adagrad are preconditioned gradient
  descent with P = diag(√v + ε): (2 + 2μ)/η and 2/η.

A network is no quadratic: during training the sharpness rises to the threshold and hovers
there ("progressive sharpening" and the edge of stability, Cohen et al. 2021), and a rate just
above 2/λ₀ may "catapult": the loss spikes, sharpness falls, training recovers (Lewkowycz et
al. 2020). So threshold / λ₀ predicts where the *start* of training becomes unstable, and how
far the sweep's edge sits from it is itself a finding. This module is arithmetic only; the
measurement is ``training/curvature.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stabsweep.records import TrialStatus

PRECONDITIONED = {"adam", "adamw", "amsgrad", "rmsprop", "adagrad"}  # sharpness of P⁻¹H, P their own


@dataclass(frozen=True)
class Threshold:
    """An optimizer's bound on sharpness: ``constant / lr`` (``constant`` is 2 for SGD)."""

    family: str  # words: "SGD with momentum 0.9"
    formula: str  # "(2 + 2β)/η"
    constant: float  # the bound × lr
    preconditioned: bool  # the bound is on P⁻¹H's top eigenvalue

    def at(self, lr: float) -> float:
        """The sharpness bound at rate ``lr``."""
        return self.constant / lr

    def edge(self, sharpness: float) -> float | None:
        """The highest stable rate for ``sharpness``: constant / λ (None when λ ≤ 0: no bound)."""
        return self.constant / sharpness if sharpness > 0 else None


def threshold(optimizer: str, kwargs: dict[str, Any]) -> Threshold | None:
    """The stability threshold of a stabsweep optimizer name with its keyword arguments (torch's
    defaults for the rest); None for one without a known bound (NAdam)."""
    from stabsweep.optim.optimizers import optimizer_kwargs

    args = optimizer_kwargs(optimizer, kwargs)
    if optimizer in ("sgd", "momentum", "nesterov"):
        beta, damp = float(args.get("momentum", 0.0)), float(args.get("dampening", 0.0))
        if beta == 0:
            return Threshold("SGD", "2/η", 2.0, False)
        if args.get("nesterov"):
            return Threshold(
                f"SGD with Nesterov momentum {beta:g}", "(2 + 2β)/((1 + 2β)η)", (2 + 2 * beta) / (1 + 2 * beta), False
            )
        if damp:
            return Threshold(
                f"SGD with momentum {beta:g}, dampening {damp:g}",
                "(2 + 2β)/((1 − τ)η)",
                (2 + 2 * beta) / (1 - damp),
                False,
            )
        return Threshold(f"SGD with momentum {beta:g}", "(2 + 2β)/η", 2 + 2 * beta, False)
    if optimizer in ("adam", "adamw", "amsgrad"):
        beta1 = float(args.get("betas", (0.9, 0.999))[0])
        name = {"adam": "Adam", "adamw": "AdamW", "amsgrad": "Adam (AMSGrad)"}[optimizer]
        return Threshold(
            f"{name} with β₁ {beta1:g}", "(2 + 2β₁)/((1 − β₁)η) on P⁻¹H", (2 + 2 * beta1) / (1 - beta1), True
        )
    if optimizer == "rmsprop":
        mu = float(args.get("momentum", 0.0))
        if mu:
            return Threshold(f"RMSprop with momentum {mu:g}", "(2 + 2μ)/η on P⁻¹H", 2 + 2 * mu, True)
        return Threshold("RMSprop", "2/η on P⁻¹H", 2.0, True)
    if optimizer == "adagrad":
        return Threshold("Adagrad", "2/η on P⁻¹H", 2.0, True)
    return None


@dataclass(frozen=True)
class SweepEdge:
    """What an lr run found at its edge, for the comparison: the threshold bounds *divergence*,
    so a first failure of another kind is told apart."""

    unstable: float | None  # the sweep's unstable base rate
    status: TrialStatus | None  # how it failed there (the lr run's unstable_kind: the worst of its seeds)
    diverged: float | None  # the lowest rate above best_lr where a trial diverged (blew up or went non-finite)
    best: float | None  # its best_lr


def sweep_edge(summary: dict[str, Any]) -> SweepEdge:
    """:class:`SweepEdge` of an lr run's summary.json, read as its own analysis judged the
    trials (``unstable_kind``; ``rates``, the per-rate status counts after its forgiveness of
    data spikes). A divergence at or below ``best_lr`` (one seed's, say) is no edge."""
    unstable, best, kind = summary.get("unstable_base_lr"), summary.get("best_lr"), summary.get("unstable_kind")
    diverged = [
        row["lr"]
        for row in summary.get("rates") or []
        if row.get(TrialStatus.DIVERGED.value) and (best is None or row["lr"] > best)
    ]
    return SweepEdge(unstable, TrialStatus.of(kind) if kind else None, min(diverged, default=None), best)


def compare(predicted: float | None, edge: SweepEdge, growth: float | None = None, start: float = 1.0) -> str:
    """The predicted edge beside the sweep's, in words: how far off, and what the literature
    says that gap means, each claim checked against what the run logged. Ratios within 1.5×
    either way count as agreement. ``growth``: the sharpness the lr run's trials reached below
    their threshold ÷ λ₀ (None when it logged none): progressive sharpening is claimed only
    where it was seen. ``start``: the schedule's first rate over its base rate (1/w for a warmup
    of w steps): a sweep that starts below the edge is explained by its warmup."""
    if predicted is None:
        return "the sharpness is not positive at initialisation, so it bounds no rate"
    unstable, best = edge.unstable, edge.best
    if unstable is None and best is None:  # every rate failed: the grid sits above the edge
        if edge.diverged is None:
            return "no rate of the sweep trained, so it shows no edge to compare with"
        return (
            f"no rate of the sweep trained; its first divergence, at {edge.diverged:.3g}, sits "
            f"{_times(edge.diverged / predicted)} the predicted edge: extend its grid downward"
        )
    if unstable is None:
        if best is not None and best > predicted * 1.5:
            return (
                f"the sweep found no unstable rate, and trained best at {best:.3g}, {best / predicted:.1f}× above "
                "the predicted edge: training left the initial curvature behind (possibly a catapult or early "
                "flattening)"
            )
        return "the sweep found no unstable rate to compare with; extend its grid upward"
    ratio = unstable / predicted
    if edge.status is TrialStatus.LEARNED_NOTHING:
        words = (
            f"the sweep's first failing rate, {unstable:.3g} ({_times(ratio)} the predicted edge), learned nothing "
            "rather than diverging or its loss rising: the threshold bounds divergence, not a network that stops "
            "learning"
        )
        if edge.diverged is None:
            return words + "; no rate above best_lr diverged"
        gap = edge.diverged / predicted
        words += f"; its first divergence, at {edge.diverged:.3g}, sits {_times(gap)} the predicted edge"
        if gap > 1.5:
            return words + (
                " (rates between the predicted edge and it start above the threshold yet do not diverge, as in the "
                "catapult range)"
            )
        if gap < 1 / 1.5:
            return words + _sharpened(growth)
        return words + " (the curvature at the start of training bounds divergence)"
    diverged = ""  # a first failure that rose and recovered: where the sweep first diverged, beside it
    if edge.status is TrialStatus.UNSTABLE and edge.diverged is not None:
        diverged = f" (its first divergence, at {edge.diverged:.3g}, {_times(edge.diverged / predicted)} it)"
    if ratio > 1.5 and start > 0 and unstable * start <= predicted * 1.5:
        return (
            f"the sweep became unstable only at {unstable:.3g}, {ratio:.1f}× above the predicted edge{diverged}, "
            f"but its schedule starts it at {start:.2g}× that, {_times(unstable * start / predicted)} the edge: the "
            "curvature at the start does not limit this sweep, which reaches its base rate only later in its "
            "schedule (a warmup), once training has moved the curvature (Kalra & Barkeshli 2024)"
        )
    if ratio > 1.5:
        return (
            f"the sweep became unstable only at {unstable:.3g}, {ratio:.1f}× above the predicted edge{diverged}: "
            "rates between the two start above the threshold and still train, as in the catapult phase (the loss "
            "spikes, sharpness falls, training recovers; Lewkowycz et al. 2020), or as an adaptive preconditioner or a "
            "normalization layer lowers the curvature the rate meets as training goes"
        )
    if ratio < 1 / 1.5:
        return (
            f"the sweep became unstable already at {unstable:.3g}, {1 / ratio:.1f}× below the predicted edge{diverged}"
            + _sharpened(growth)
        )
    return (
        f"the sweep became unstable at {unstable:.3g}, {ratio:.2f}× the predicted edge{diverged}: within 1.5× of "
        "it, as the curvature at the start of training predicts"
    )


def _times(ratio: float) -> str:
    """A rate ÷ the predicted edge in words: "2.3× above", "7.2× below", "at about"."""
    if 1 / 1.1 <= ratio <= 1.1:
        return "at about"
    return f"{ratio:.2g}× above" if ratio > 1 else f"{1 / ratio:.2g}× below"


def _sharpened(growth: float | None) -> str:
    """Why an edge sits below the prediction, as far as the logged sharpness shows it."""
    if growth is None:
        return (
            ": training likely sharpened (progressive sharpening, Cohen et al. 2021: the edge falls as training goes "
            "on); log sharpness along the sweep to see it"
        )
    if growth >= 1.5:
        return (
            f": training sharpened {growth:.3g}× (logged; progressive sharpening, Cohen et al. 2021), so the edge fell"
        )
    return (
        f"; yet the logged sharpness grew only {growth:.2g}×, so progressive sharpening does not explain the gap: "
        "the threshold, a bound for a quadratic, does not describe this failure"
    )


def crossed(sharpness: list[tuple[int, float]], bound: float) -> int | None:
    """The first step whose logged sharpness (``(step, λ)`` pairs) is above ``bound``, or None."""
    return next((step for step, value in sharpness if value == value and value > bound), None)


def stable_sharpness(sharpness: Any, trials: Any) -> float | None:
    """The highest sharpness the trials that trained (status ok) reached while below their own
    threshold (``ratio`` < 1), from an lr run's sharpness.csv and trials.csv; None without such
    a measurement.

    This is the curvature training grows to by itself (progressive sharpening, Cohen et al.
    2021), a property of the loss landscape that threshold / it turns into an edge for any
    rate. A measurement at or above the trial's own threshold is left out: there sharpness is
    set by the rate (it hovers at the threshold, the edge of stability, or overshoots and falls
    back, the catapult of Lewkowycz et al. 2020), so it says only that this rate is at its edge.
    """
    if sharpness is None or not len(sharpness) or trials is None or not len(trials):
        return None
    ok = trials[trials["status"].map(TrialStatus.of) == TrialStatus.OK]["trial_id"]
    stable = sharpness[sharpness["trial_id"].isin(ok) & (sharpness["ratio"] < 1)]["sharpness"].dropna()
    return float(stable.max()) if len(stable) else None


def sharpness_findings(sharpness: Any, trials: Any) -> dict[str, Any] | None:
    """What the logged sharpness says about a sweep's trials (sharpness.csv, trials.csv), or None
    when none was logged: for each trial that diverged or became unstable, whether its sharpness
    crossed its threshold (``ratio`` = λ·η / constant above 1) before it failed; for warmup
    trials, whether the ratio stayed at or below 1 through the ramp; the highest ratio of the
    trials that trained (≈ 1: the edge of stability, Cohen et al. 2021)."""

    if sharpness is None or not len(sharpness):
        return None
    failing, ramps, peaks = [], [], []
    for _, row in trials.iterrows():
        own = sharpness[sharpness["trial_id"] == row["trial_id"]]
        if not len(own):
            continue
        status = TrialStatus.of(row["status"])
        above = own[own["ratio"] > 1]
        first = int(above["step"].iloc[0]) if len(above) else None
        if status in (TrialStatus.DIVERGED, TrialStatus.UNSTABLE):
            failed = row.get("diverged_step")
            failed = row.get("instability_step") if failed != failed or failed is None else failed
            failed = int(failed) if failed == failed and failed is not None else None
            before = first is not None and (failed is None or first < failed)
            failing.append(
                {
                    "trial_id": int(row["trial_id"]),
                    "lr": float(row["lr"]),
                    "failed_step": failed,
                    "crossed_step": first,
                    "crossed_before": bool(before),
                }
            )
        elif status is TrialStatus.OK:
            peaks.append(float(own["ratio"].max()))
        warm = int(row.get("warmup_steps") or 0) if row.get("warmup_steps") == row.get("warmup_steps") else 0
        if warm:
            during = own[own["step"] < warm]
            if len(during):
                ramps.append(
                    {
                        "trial_id": int(row["trial_id"]),
                        "warmup_steps": warm,
                        "max_ratio": float(during["ratio"].max()),
                        "under": bool((during["ratio"] <= 1).all()),
                    }
                )
    crossed = [f for f in failing if f["crossed_before"]]
    words = []
    if failing:
        words.append(
            f"{len(crossed)} of the {len(failing)} trials that diverged or became unstable crossed their sharpness "
            "threshold before they failed"
        )
        if crossed:
            f = crossed[0]
            words[-1] += f" (lr {f['lr']:.3g}: at step {f['crossed_step']}, failed at {f['failed_step']})"
    if peaks:
        words.append(
            f"the trials that trained peaked at {max(peaks):.2f}× their threshold"
            + (" (at the edge of stability)" if 0.7 <= max(peaks) <= 1.5 else "")
        )
    if ramps:
        under = sum(r["under"] for r in ramps)
        words.append(f"warmup kept {under} of {len(ramps)} trials under their threshold through the ramp")
    return {
        "failing": failing,
        "crossed_before_failing": len(crossed),
        "max_ratio_ok": max(peaks) if peaks else None,
        "warmup": ramps,
        "sentence": "Sharpness: " + "; ".join(words) + "." if words else None,
    }
