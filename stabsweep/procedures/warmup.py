"""``stabsweep warmup``: the shortest warmup that lets a 10× higher learning rate train.

The playbook's recipe (DESIGN §5): take the unstable base rate from the lr sweep, multiply
it (10× by default), and probe linear warmups of increasing length: each probe ramps from 0
to ``base_lr`` over ``warmup_steps`` and then holds ``base_lr`` for ``post_warmup_steps`` =
2 × ``warmup_steps``. A no-warmup baseline at each base rate shows what warmup fixes. The
pick is the shortest warmup whose probe is ok; a confirm run then trains the full schedule
with that warmup prepended and is compared with the lr sweep's best trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from stabsweep.config.schema import Config, ScheduleConfig
from stabsweep.engine.trial import TrialSpec
from stabsweep.errors import UserError
from stabsweep.procedures.context import Context
from stabsweep.procedures.runs import LrRun
from stabsweep.report import plots
from stabsweep.report.console import print_verdict, trials_table

COMMAND = "warmup"
POST_WARMUP_FACTOR = 2  # post_warmup_steps = 2 × warmup_steps
SAME_WITHIN = 0.01  # confirm vs lr* best eval loss: a relative gap below this is "as well"


@dataclass(frozen=True)
class WarmupPlan:
    unstable_base_lr: float
    base_lrs: list[float]
    warmup_steps: list[int]  # the candidates kept
    dropped: list[int]  # candidates above max_fraction × train.steps
    probes: list[TrialSpec] = field(default_factory=list)


def plan(config: Config, unstable_base_lr: float) -> WarmupPlan:
    """Baseline and probes per base rate; candidates above 10% of train.steps are dropped."""
    sweep, train = config.warmup_sweep, config.train
    cap = sweep.max_fraction * train.steps
    kept = [w for w in sweep.warmup_steps if w <= cap]
    dropped = [w for w in sweep.warmup_steps if w > cap]
    if not kept:
        raise UserError(
            f"warmup_sweep.warmup_steps: every candidate ({', '.join(map(str, dropped))}) is above "
            f"{sweep.max_fraction:.0%} of train.steps={train.steps}; give shorter warmups or more steps"
        )
    base_lrs = [float(f"{m * unstable_base_lr:.6g}") for m in sweep.multipliers]
    constant = ScheduleConfig(name="constant")
    longest = (1 + POST_WARMUP_FACTOR) * max(kept)
    probes = []
    for multiplier, base_lr in zip(sweep.multipliers, base_lrs, strict=True):
        for w in (0, *kept):
            steps = (1 + POST_WARMUP_FACTOR) * w if w else longest
            probes.append(
                TrialSpec(
                    trial_id=len(probes),
                    lr=base_lr,
                    seed=config.seed,
                    steps=steps,
                    eval_every=max(1, min(train.eval_every, steps // 5)),
                    schedule=constant,
                    warmup_steps=w,
                    clip=train.clip,
                    columns={
                        "phase": "probe",
                        "multiplier": multiplier,
                        "base_lr": base_lr,
                        "warmup_steps": w,
                        "post_warmup_steps": POST_WARMUP_FACTOR * w if w else steps,
                    },
                )
            )
    return WarmupPlan(unstable_base_lr, base_lrs, kept, dropped, probes)


def pick(trials: Any) -> dict[float, int | None]:
    """Per base rate: the shortest warmup (> 0) whose probe is ok, or None."""
    picks: dict[float, int | None] = {}
    probes = trials[(trials["phase"] == "probe") & (trials["warmup_steps"] > 0)]
    for base_lr, part in probes.groupby("base_lr", sort=True):
        ok = part[part["status"] == "ok"]
        picks[float(base_lr)] = int(ok["warmup_steps"].min()) if len(ok) else None
    return picks


def confirm_spec(config: Config, base_lr: float, multiplier: float, warmup_steps: int, trial_id: int) -> TrialSpec:
    """The full run: the config's own schedule with the warmup prepended (train.steps + warmup)."""
    train = config.train
    return TrialSpec(
        trial_id=trial_id,
        lr=base_lr,
        seed=config.seed,
        steps=train.steps + warmup_steps,
        eval_every=train.eval_every,
        schedule=train.schedule,
        warmup_steps=warmup_steps,
        clip=train.clip,
        columns={
            "phase": "confirm",
            "multiplier": multiplier,
            "base_lr": base_lr,
            "warmup_steps": warmup_steps,
            "post_warmup_steps": train.steps,
        },
    )


def run(ctx: Context, unstable_base_lr: float, lr_run: LrRun | None) -> dict[str, Any]:
    config = ctx.config
    the_plan = plan(config, unstable_base_lr)
    job = ctx.job()
    store = ctx.store(COMMAND)
    _print_plan(ctx, the_plan)
    ctx.run_trials(the_plan.probes, job, store, f"warmup probes at {', '.join(f'{b:g}' for b in the_plan.base_lrs)}")
    trials, steps, _ = store.finalize()
    picks = pick(trials)
    working = {b: w for b, w in picks.items() if w is not None}
    base_lr = max(working) if working else the_plan.base_lrs[0]
    recommended = working.get(base_lr)

    confirm: dict[str, Any] | None = None
    if recommended is not None and config.warmup_sweep.confirm:
        multiplier = config.warmup_sweep.multipliers[the_plan.base_lrs.index(base_lr)]
        spec = confirm_spec(config, base_lr, multiplier, recommended, trial_id=len(the_plan.probes))
        ctx.run_trials([spec], job, store, f"confirm: warmup {recommended} at lr={base_lr:g}")
        trials, steps, _ = store.finalize()
        confirm = _confirm_summary(trials, spec, lr_run)

    warnings = []
    if the_plan.dropped:
        warnings.append(
            f"warmup candidates {the_plan.dropped} dropped: above "
            f"{config.warmup_sweep.max_fraction:.0%} of train.steps={config.train.steps}"
        )
    if recommended is not None and recommended > config.warmup_sweep.warn_fraction * config.train.steps:
        warnings.append(
            f"the recommended warmup ({recommended} steps) is more than "
            f"{config.warmup_sweep.warn_fraction:.0%} of train.steps: increase train.steps"
        )
    summary = {
        "command": COMMAND,
        "config": config.source,
        "unstable_base_lr": unstable_base_lr,
        "base_lr": base_lr,
        "recommended_warmup_steps": recommended,
        "picks": [{"base_lr": b, "recommended_warmup_steps": w} for b, w in picks.items()],
        "warmup_steps_probed": the_plan.warmup_steps,
        "warmup_steps_dropped": the_plan.dropped,
        "confirm": confirm,
        "verdict": verdict(base_lr, unstable_base_lr, recommended, confirm),
        "warnings": warnings,
        "rules": {
            "pick": "shortest warmup whose probe is ok",
            "probe": f"linear ramp 0 → base_lr over warmup_steps, then base_lr for {POST_WARMUP_FACTOR} × warmup_steps",
            "dropped": f"candidates above {config.warmup_sweep.max_fraction:.0%} of train.steps",
            "detect": config.detect.model_dump(),
        },
        "next_command": f"stabsweep clip-report {ctx.run_root}" + (" --sweep" if recommended is None else ""),
    }
    _plot(store.folder, trials, steps, lr_run, picks)
    store.write_summary(summary)
    _report(ctx, trials, summary, str(store.folder))
    return summary


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
    if confirm["status"] not in ("ok", "unstable"):
        return text + f" But the full-length confirm run was {confirm['status']}: {confirm['reason']}."
    if confirm["status"] == "unstable":
        text += f" The full-length confirm run was unstable later on ({confirm['reason']})."
    comparison = confirm.get("comparison")
    if comparison:
        text += (
            f" The full run with warmup reached eval loss {confirm['best_eval_loss']:.4g}: it trained "
            f"{comparison} the lr sweep's best ({confirm['lr_star_best_eval_loss']:.4g} "
            f"at lr*={confirm['lr_star']:.3g})."
        )
    return text


def _confirm_summary(trials: Any, spec: TrialSpec, lr_run: LrRun | None) -> dict[str, Any]:
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
    if lr_run is not None and lr_run.summary.get("best_objective") is not None and out["best_eval_loss"] is not None:
        reference = float(lr_run.summary["best_objective"])
        gap = (out["best_eval_loss"] - reference) / abs(reference)
        out.update(
            lr_star=lr_run.summary["best_lr"],
            lr_star_best_eval_loss=reference,
            relative_gap=round(gap, 4),
            comparison="as well as" if abs(gap) < SAME_WITHIN else ("better than" if gap < 0 else "worse than"),
        )
    return out


def _print_plan(ctx: Context, the_plan: WarmupPlan) -> None:
    import pandas as pd

    rows = pd.DataFrame([{"trial_id": s.trial_id, "lr": s.lr, **s.columns, "steps": s.steps} for s in the_plan.probes])
    columns = ["base_lr", "warmup_steps", "post_warmup_steps", "steps"]
    ctx.console.print(
        trials_table(
            rows,
            columns,
            f"warmup plan (unstable base lr {the_plan.unstable_base_lr:.3g}; warmup 0 = no-warmup baseline)",
        )
    )
    if the_plan.dropped:
        ctx.console.print(
            f"[dim]dropped (above {ctx.config.warmup_sweep.max_fraction:.0%} of train.steps): {the_plan.dropped}[/]"
        )


def _plot(folder: Any, trials: Any, steps: Any, lr_run: LrRun | None, picks: dict[float, int | None]) -> None:
    out = folder / "plots"
    probes = trials[trials["phase"] == "probe"]
    plots.warmup_axis(probes, out / "warmup_sweep.png", picks)
    lr_trials = lr_run.trials() if lr_run is not None else None
    plots.base_rate(trials, lr_trials, out / "base_rate.png")
    probe_steps = steps[steps["trial_id"].isin(probes["trial_id"])]
    plots.step_curves(
        probe_steps,
        probes,
        "train_loss",
        out / "probe_curves.png",
        label="warmup_steps",
        above_ids=list(probes[probes["status"] == "ok"]["trial_id"][:3]),
        smooth=5,
        title="warmup probes: training loss",
    )


def _report(ctx: Context, trials: Any, summary: dict[str, Any], folder: str) -> None:
    marks = {}
    if summary["confirm"]:
        marks[summary["confirm"]["trial_id"]] = "confirm"
    for _, row in trials.iterrows():
        if (
            row["phase"] == "probe"
            and row["base_lr"] == summary["base_lr"]
            and row["warmup_steps"] == summary["recommended_warmup_steps"]
        ):
            marks[int(row["trial_id"])] = "pick"
    columns = ["phase", "base_lr", "warmup_steps", "status", "best_eval_loss", "reason"]
    ctx.console.print(trials_table(trials, columns, "warmup sweep", marks))
    print_verdict(ctx.console, summary["verdict"], summary["warnings"], summary["next_command"], folder)
