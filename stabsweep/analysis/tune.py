"""What ``stabsweep tune`` found: which mitigation to train with, and how much it bought.

The confirm stage sweeps one grid of rates under each mitigation: ``none``, ``warmup`` (the
warmup stage's pick), ``clip`` (the clip stage's recommended threshold), ``skip`` (skipping
the update of a spike, ``train.skip_spikes``'s rule) and ``both`` (warmup and clipping). Each
mitigation's trials get the lr sweep's findings (``analysis/lr.py``). The choice:

1. candidates are the mitigations with a feasible best rate; a clipping mitigation whose
   trials at its best rate clipped more than ``clip_sweep.aggressive_fraction`` of their
   steps is not a candidate: clipping that bites on most steps is a lower learning rate in
   disguise, and the playbook prefers lowering the rate;
2. the best objective among the candidates sets the bar;
3. the chosen one is the simplest candidate (none, warmup, clip, skip, then both) whose
   best objective is within ``SAME_WITHIN`` (1%) of the bar, and whose stable range (its
   unstable base rate, or past the top of the grid when none was found) is at least as wide
   as that of every simpler candidate: a fix is taken for a better loss, never at the cost of
   the range a simpler choice had. A fix that only widens the range (same loss) is not taken;
   the verdict names it, as margin for a higher rate or a larger model. When the best
   objective comes only with a narrower range, the best of the candidates that keep the
   range is chosen (the simplest within 1% of it), and the verdict names the trade.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from stabsweep.analysis.lr import LrFindings

MITIGATIONS = ("none", "warmup", "clip", "skip", "both")  # simplest first


def uses_warmup(mitigation: str) -> bool:
    return mitigation in ("warmup", "both")


def uses_clip(mitigation: str) -> bool:
    return mitigation in ("clip", "both")


def uses_skip(mitigation: str) -> bool:
    return mitigation == "skip"


SAME_WITHIN = 0.01


@dataclass
class Mitigated:
    name: str
    findings: LrFindings
    clipped_fraction: float | None = None  # at its best rate, mean over seeds (clipping mitigations)
    aggressive: bool = False
    top_rate: float = math.inf  # the highest rate swept

    @property
    def stable_up_to(self) -> float:
        """Its unstable base rate, or past the grid's top when none was found."""
        return self.findings.unstable_base_lr or self.top_rate * 10

    def brief(self) -> dict[str, Any]:
        """What summary.json's ``before`` and ``after`` hold."""
        f = self.findings
        return {
            "mitigation": self.name,
            "best_lr": f.best_lr,
            "unstable_base_lr": f.unstable_base_lr,
            "best_objective": f.best_objective,
        }

    def as_dict(self) -> dict[str, Any]:
        """One entry of summary.json's ``mitigations``."""
        f = self.findings
        return {
            **self.brief(),
            "unstable_kind": f.unstable_kind,
            "p_unstable": f.p_unstable,
            "clipped_fraction_at_best": self.clipped_fraction,
            "aggressive": self.aggressive,
            "warnings": f.warnings,
            "rates": f.rates,
        }


@dataclass
class Choice:
    chosen: Mitigated | None
    before: Mitigated
    candidates: list[str] = field(default_factory=list)
    reason: str = ""
    others: list[Mitigated] = field(default_factory=list)  # the candidates not chosen
    trade: str | None = None  # a better objective that came only with a narrower range, in words


def choose(mitigated: dict[str, Mitigated]) -> Choice:
    """The choice rule of the module docstring."""
    before = mitigated["none"]
    candidates = [
        m for name in MITIGATIONS if (m := mitigated.get(name)) and m.findings.best_lr is not None and not m.aggressive
    ]
    if not candidates:
        return Choice(None, before, [], "no mitigation trained at any rate of the grid")
    bar = min(m.findings.best_objective for m in candidates)
    # Those whose stable range is at least as wide as every simpler candidate's (the simplest always is).
    wide = [m for i, m in enumerate(candidates) if all(m.stable_up_to >= s.stable_up_to for s in candidates[:i])]
    chosen = next((m for m in wide if m.findings.best_objective <= bar * (1 + SAME_WITHIN) + 1e-12), None)
    reason = f"the simplest mitigation within {SAME_WITHIN:.0%} of the best objective ({bar:.4g}) and as stable"
    trade = None
    if chosen is None:  # the best loss comes only with a narrower range: keep the range, name the trade
        best = min(candidates, key=lambda m: m.findings.best_objective)
        wide_bar = min(m.findings.best_objective for m in wide)
        chosen = next(m for m in wide if m.findings.best_objective <= wide_bar * (1 + SAME_WITHIN) + 1e-12)
        edge = best.findings.unstable_base_lr
        trade = (
            f"{best.name} reaches a better objective ({bar:.4g}, against {chosen.findings.best_objective:.4g}) but "
            f"only with a narrower stable range (unstable at {'–' if edge is None else f'{edge:.3g}'}, against "
            f"{_edge(chosen)} with {chosen.name})"
        )
        reason = f"the simplest mitigation that keeps the stable range; {trade}"
    others = [m for m in candidates if m is not chosen]
    return Choice(chosen, before, [m.name for m in candidates], reason, others, trade)


def _edge(m: Mitigated) -> str:
    return "no rate of the grid" if m.findings.unstable_base_lr is None else f"{m.findings.unstable_base_lr:.3g}"


def gains(choice: Choice) -> tuple[float | str | None, float | None]:
    """(stable_range_gain, objective_gain) of the chosen mitigation over none. The range gain is
    ``">grid"`` when nothing in the grid became unstable with the mitigation (but did without)."""
    after, before = choice.chosen, choice.before
    if after is None:
        return None, None
    range_gain: float | str | None = None
    if before.findings.unstable_base_lr is not None:
        if after.findings.unstable_base_lr is None:
            range_gain = ">grid"
        else:
            range_gain = round(after.findings.unstable_base_lr / before.findings.unstable_base_lr, 4)
    objective_gain = None
    if before.findings.best_objective and after.findings.best_objective is not None:
        objective_gain = round(
            (before.findings.best_objective - after.findings.best_objective) / abs(before.findings.best_objective), 4
        )
    return range_gain, objective_gain


def describe(name: str, warmup_steps: int | None, clip_threshold: float | None, skip: Any = None) -> str:
    parts = []
    if uses_skip(name) and skip is not None:
        parts.append(f"skipping the update of a spike ({skip.sigma:g} σ over {skip.window} steps)")
    if uses_warmup(name) and warmup_steps:
        parts.append(f"a warmup of {warmup_steps} steps")
    if uses_clip(name) and clip_threshold:
        parts.append(f"clipping at {clip_threshold:.3g}")
    return " with ".join(parts) or "no warmup, no clipping and no skipping"


def verdict(choice: Choice, warmup_steps: int | None, clip_threshold: float | None, skip: Any = None) -> str:
    """The whole procedure's answer in plain words."""
    if choice.chosen is None:
        return (
            "No mitigation trained at any rate of the grid. The playbook's next steps: a lower rate, normalisation or "
            "residual changes to the model, or a different optimizer; run stabsweep doctor first."
        )
    text = _verdict(choice, warmup_steps, clip_threshold, skip)
    if choice.trade:
        text += f" Not chosen: {choice.trade}; a fix is never taken at the cost of the stable range."
    return text


def _verdict(choice: Choice, warmup_steps: int | None, clip_threshold: float | None, skip: Any = None) -> str:
    before, after = choice.before.findings, choice.chosen.findings
    range_gain, _ = gains(choice)
    loss = "best eval loss" if before.objective == "best_eval_loss" else before.objective.replace("_", " ")
    if choice.chosen.name == "none":
        fixes = [m for m in MITIGATIONS[1:] if m in choice.candidates]
        tried = ", ".join(fixes) if fixes else "the fixes"
        wider = [m for m in choice.others if m.stable_up_to > choice.before.stable_up_to * (1 + SAME_WITHIN)]
        if wider:
            widest = max(wider, key=lambda m: m.stable_up_to)
            edge = widest.findings.unstable_base_lr
            return (
                f"{tried[0].upper() + tried[1:]} gave no better loss than plain training (best rate "
                f"{before.best_lr:.3g}, {loss} {before.best_objective:.4g}), so train with the plain config. "
                f"{widest.name.capitalize()} does widen the stable range (unstable at "
                f"{'no rate of the grid' if edge is None else f'{edge:.3g}'}, was {before.unstable_base_lr:.3g}): "
                "margin worth adding before raising the rate or scaling the model up."
            )
        return (
            f"Neither warmup nor clipping helped: {tried} gave no better loss and no wider stable range than plain "
            f"training (best rate {before.best_lr:.3g}, {loss} {before.best_objective:.4g}). Train with the "
            "plain config; for a higher rate the playbook suggests normalisation or residual changes, or another "
            "optimizer."
        )
    what = describe(choice.chosen.name, warmup_steps, clip_threshold, skip)
    text = what[0].upper() + what[1:]
    if range_gain == ">grid":
        text += f" keeps training stable across the whole grid (without it: unstable at {before.unstable_base_lr:.3g})"
    elif isinstance(range_gain, float) and range_gain > 1 + SAME_WITHIN:
        text += (
            f" keeps training stable up to {after.unstable_base_lr:.3g} (was {before.unstable_base_lr:.3g}: "
            f"{range_gain:.2g}× the stable range)"
        )
    elif isinstance(range_gain, float) and range_gain >= 1 - SAME_WITHIN:
        text += f" leaves the stable range where it was (unstable at {after.unstable_base_lr:.3g} either way)"
    elif isinstance(range_gain, float):
        text += (
            f" narrows the stable range (unstable at {after.unstable_base_lr:.3g}, was "
            f"{before.unstable_base_lr:.3g}) for a better loss"
        )
    else:
        text += " trains"
    if before.best_lr is None:
        text += (
            f"; its best rate is {after.best_lr:.3g} ({loss} {after.best_objective:.4g}), where nothing trained "
            "without it."
        )
        return text
    moves = (
        f"stays at {after.best_lr:.3g}"
        if math.isclose(before.best_lr, after.best_lr, rel_tol=1e-6)
        else f"moves from {before.best_lr:.3g} to {after.best_lr:.3g}"
    )
    text += f"; the best rate {moves} and the {loss} goes from {before.best_objective:.4g} to "
    text += f"{after.best_objective:.4g}."
    return text
