"""What a warmup sweep found: the warmup to recommend, and how its full-length run compares.

The playbook's question is whether a warmup lets a rate well above the unstable one train
stably; these rules turn the probes' statuses into that answer, in words.
"""

from __future__ import annotations

import math
from typing import Any

from stabsweep.records import TrialSpec, TrialStatus

SAME_WITHIN = 0.01  # confirm vs lr* best eval loss: a relative gap below this is "as well"


def pick(trials: Any) -> dict[float, int | None]:
    """Per base rate: the shortest warmup (> 0) whose probe is ok, or None."""
    picks: dict[float, int | None] = {}
    probes = trials[(trials["phase"] == "probe") & (trials["warmup_steps"] > 0)]
    for base_lr, part in probes.groupby("base_lr", sort=True):
        ok = part[part["status"] == TrialStatus.OK]
        picks[float(base_lr)] = int(ok["warmup_steps"].min()) if len(ok) else None
    return picks


def verdict(base_lr: float, unstable: float, recommended: int | None, confirm: dict[str, Any] | None) -> str:
    times = f"{base_lr / unstable:.3g}×"
    if recommended is None:
        return (
            f"No warmup in the grid made lr={base_lr:.3g} ({times} the unstable rate) train stably. "
            "Try longer warmups (raise train.steps so they fit under 10%), gradient clipping "
            "(stabsweep clip-report), or a lower multiplier."
        )
    text = (
        f"A warmup of {recommended} steps makes lr={base_lr:.3g} ({times} the unstable rate {unstable:.3g}) "
        "train stably."
    )
    if confirm is None:
        return text
    status = TrialStatus.of(confirm["status"])
    if not status.feasible:
        return text + f" But the full-length confirm run was {status}: {confirm['reason']}."
    if status is TrialStatus.UNSTABLE:
        text += f" The full-length confirm run was unstable later on ({confirm['reason']})."
    comparison = confirm.get("comparison")
    if comparison:
        text += (
            f" The full run with warmup reached eval loss {confirm['best_eval_loss']:.4g}: it trained "
            f"{comparison} the lr sweep's best ({confirm['lr_star_best_eval_loss']:.4g} "
            f"at lr*={confirm['lr_star']:.3g})."
        )
    return text


def confirm_summary(trials: Any, spec: TrialSpec, lr_summary: dict[str, Any] | None) -> dict[str, Any]:
    """The confirm run's outcome, compared with the lr sweep's best trial when there is one."""
    row = trials[trials["trial_id"] == spec.trial_id].iloc[0]
    out = {
        "trial_id": spec.trial_id,
        "base_lr": spec.lr,
        "warmup_steps": spec.warmup_steps,
        "total_steps": spec.steps,
        "status": str(row["status"]),
        "reason": str(row["reason"]),
        "best_eval_loss": None if math.isnan(row["best_eval_loss"]) else float(row["best_eval_loss"]),
    }
    if lr_summary and lr_summary.get("best_objective") is not None and out["best_eval_loss"] is not None:
        reference = float(lr_summary["best_objective"])
        gap = (out["best_eval_loss"] - reference) / abs(reference)
        out.update(
            lr_star=lr_summary["best_lr"],
            lr_star_best_eval_loss=reference,
            relative_gap=round(gap, 4),
            comparison="as well as" if abs(gap) < SAME_WITHIN else ("better than" if gap < 0 else "worse than"),
        )
    return out
