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


def compare(predicted: float | None, unstable: float | None, best: float | None) -> str:
    """The predicted edge beside the sweep's, in words: how far off, and what the literature
    says that gap means. Ratios within 1.5× either way count as agreement."""
    if predicted is None:
        return "the sharpness is not positive at initialisation, so it bounds no rate"
    if unstable is None:
        if best is not None and best > predicted * 1.5:
            return (
                f"the sweep found no unstable rate, and trained best at {best:.3g}, {best / predicted:.1f}× above "
                "the predicted edge: training left the initial curvature behind (a catapult or early flattening)"
            )
        return "the sweep found no unstable rate to compare with; extend its grid past the predicted edge"
    ratio = unstable / predicted
    if ratio > 1.5:
        return (
            f"the sweep became unstable only at {unstable:.3g}, {ratio:.1f}× the predicted edge: rates between "
            "them start above the threshold and still train, as in the catapult phase (the loss spikes, "
            "sharpness falls, training recovers; Lewkowycz et al. 2020)"
        )
    if ratio < 1 / 1.5:
        return (
            f"the sweep became unstable already at {unstable:.3g}, {1 / ratio:.1f}× below the predicted edge: "
            "training sharpened (progressive sharpening, Cohen et al. 2021), so the edge fell as it went on"
        )
    return (
        f"the sweep became unstable at {unstable:.3g}, {ratio:.2f}× the predicted edge: the curvature at the "
        "start of training decides it"
    )


def crossed(sharpness: list[tuple[int, float]], bound: float) -> int | None:
    """The first step whose logged sharpness (``(step, λ)`` pairs) is above ``bound``, or None."""
    return next((step for step, value in sharpness if value == value and value > bound), None)
