"""``stabsweep warmup``: the shortest warmup that lets a 10× higher learning rate train.

The playbook's recipe (docs/contract.md, "Detection rules"): take the unstable base rate from the lr sweep, multiply
it (10× by default), and probe linear warmups of increasing length: each probe ramps from 0
to ``base_lr`` over ``warmup_steps`` and then holds ``base_lr`` for ``post_warmup_steps`` =
2 × ``warmup_steps``. A no-warmup baseline at each base rate shows what warmup fixes. The
pick is the shortest warmup whose probe is ok; a confirm run then trains the full schedule
with that warmup prepended and is compared with the lr sweep's best trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stabsweep.analysis.warmup import confirm_summary, pick, verdict
from stabsweep.config.schema import Config, ScheduleConfig
from stabsweep.errors import UserError
from stabsweep.procedures.context import Context
from stabsweep.records import TrialSpec, TrialStatus
from stabsweep.report import plots
from stabsweep.report.console import print_verdict, trials_table
from stabsweep.results.runs import LrRun

COMMAND = "warmup"
POST_WARMUP_FACTOR = 2  # post_warmup_steps = 2 × warmup_steps


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
    ctx.stop_if_nothing_trained(store, trials, COMMAND)
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
        confirm = confirm_summary(trials, spec, lr_run.summary if lr_run else None)

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
        above_ids=list(probes[probes["status"] == TrialStatus.OK]["trial_id"][:3]),
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
