"""What a warmup sweep found: the warmup to recommend, and how its full-length run compares.

The rules (docs/contract.md, "Detection rules"), per base rate:

- a warmup length *works* when every seed's probe with it is ok;
- when the no-warmup baseline works already, no warmup is needed at that rate;
- the recommendation is the shortest warmup that works and after which every longer
  candidate works too: one probe that happened to be ok between failures is luck, not a
  recommendation, and is reported as such;
- the full-length confirm run must hold (every seed ok); when it does not, the next-longer
  working warmup is confirmed instead, before the verdict says none worked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stabsweep.records import TrialSpec, TrialStatus

SAME_WITHIN = 0.01  # confirm vs lr* best eval loss: a relative gap below this is "as well"


@dataclass
class WarmupPick:
    """The outcome of the probes at one base rate."""

    base_lr: float
    baseline_ok: bool  # the no-warmup baseline works at this rate
    working: list[int] = field(default_factory=list)  # warmup lengths whose every seed is ok
    candidates: list[int] = field(default_factory=list)  # the lengths that could be confirmed, shortest first
    lucky: list[int] = field(default_factory=list)  # ok, but a longer warmup failed: not trusted

    @property
    def recommended(self) -> int | None:
        return self.candidates[0] if self.candidates else None


def picks(trials: Any) -> dict[float, WarmupPick]:
    """Per base rate: which warmups work, the candidates to confirm, and the lucky ones."""
    trials = trials.assign(status=trials["status"].map(TrialStatus.of))
    probes = trials[trials["phase"] == "probe"]
    out: dict[float, WarmupPick] = {}
    for base_lr, part in probes.groupby("base_lr", sort=True):
        works = {int(w): bool((p["status"] == TrialStatus.OK).all()) for w, p in part.groupby("warmup_steps")}
        lengths = sorted(w for w in works if w > 0)
        working = [w for w in lengths if works[w]]
        # The shortest w after which every longer candidate works: a run of successes to the end.
        tail: list[int] = []
        for w in reversed(lengths):
            if not works[w]:
                break
            tail.insert(0, w)
        out[float(base_lr)] = WarmupPick(
            float(base_lr), works.get(0, False), working, tail, [w for w in working if w not in tail]
        )
    return out


def confirm_holds(trials: Any, specs: list[TrialSpec]) -> bool:
    """A confirm run holds when every seed's full-length run is ok."""
    ids = {spec.trial_id for spec in specs}
    statuses = trials.loc[trials["trial_id"].isin(ids), "status"].map(TrialStatus.of)
    return len(statuses) == len(ids) and bool((statuses == TrialStatus.OK).all())


def confirm_summary(trials: Any, specs: list[TrialSpec], lr_summary: dict[str, Any] | None) -> dict[str, Any]:
    """A confirm run's outcome over its seeds, compared with the lr sweep's best when there is one."""
    rows = trials[trials["trial_id"].isin([s.trial_id for s in specs])]
    statuses = rows["status"].map(TrialStatus.of)
    worst = next(
        (
            s
            for s in (TrialStatus.FAILED, TrialStatus.DIVERGED, TrialStatus.LEARNED_NOTHING, TrialStatus.UNSTABLE)
            if (statuses == s).any()
        ),
        TrialStatus.OK,
    )
    first_bad = rows[statuses == worst].iloc[0] if worst is not TrialStatus.OK else rows.iloc[0]
    losses = rows["best_eval_loss"].dropna()
    spec = specs[0]
    out = {
        "trial_ids": [s.trial_id for s in specs],
        "base_lr": spec.lr,
        "warmup_steps": spec.warmup_steps,
        "total_steps": spec.steps,
        "seeds": len(specs),
        "status": worst.value,
        "reason": str(first_bad["reason"]),
        "holds": confirm_holds(trials, specs),
        "best_eval_loss": float(losses.mean()) if len(losses) else None,
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


def verdict(pick: WarmupPick, unstable: float, confirms: list[dict[str, Any]], multipliers: list[float]) -> str:
    """The warmup sweep's finding in words."""
    base_lr = pick.base_lr
    times = f"{base_lr / unstable:.3g}×"
    if pick.baseline_ok:
        higher = f"{max(multipliers) * 10:g}"
        return (
            f"lr={base_lr:.3g} ({times} the unstable rate {unstable:.3g}) trains stably without any warmup: no warmup "
            f"is needed at this rate. Probe a higher one (--multiplier {higher})."
        )
    lucky = ""
    if pick.lucky:
        lucky = (
            f" A warmup of {', '.join(map(str, pick.lucky))} steps was ok while a longer one failed: luck, "
            "not a recommendation."
        )
    if pick.recommended is None:
        return (
            f"No warmup in the grid made lr={base_lr:.3g} ({times} the unstable rate) train stably.{lucky} "
            "Try longer warmups (raise train.steps so they fit under 10%), gradient clipping "
            "(stabsweep clip-report), or a lower multiplier."
        )
    held = next((c for c in confirms if c["holds"]), None)
    if confirms and held is None:
        tried = ", ".join(f"{c['warmup_steps']} ({c['status']}: {c['reason']})" for c in confirms)
        return (
            f"Warmup probes at lr={base_lr:.3g} ({times} the unstable rate) were ok, but no full-length run with "
            f"warmup held: {tried}.{lucky} The instability comes later than warmup reaches: try gradient clipping "
            "(stabsweep clip-report) or a lower multiplier."
        )
    chosen = held["warmup_steps"] if held else pick.recommended
    text = f"A warmup of {chosen} steps makes lr={base_lr:.3g} ({times} the unstable rate {unstable:.3g}) train stably."
    if held and held is not confirms[0]:
        text += (
            f" (The full-length run with {confirms[0]['warmup_steps']} steps did not hold: {confirms[0]['status']}.)"
        )
    text += lucky
    if held and held.get("comparison"):
        text += (
            f" The full run with warmup reached eval loss {held['best_eval_loss']:.4g}: it trained "
            f"{held['comparison']} the lr sweep's best ({held['lr_star_best_eval_loss']:.4g} "
            f"at lr*={held['lr_star']:.3g})."
        )
    return text
