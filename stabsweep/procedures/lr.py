"""``stabsweep lr``: the learning-rate sweep that finds lr* and the unstable base rate.

Plan one trial per rate of the grid, run them, apply the detection rules, then (with
``--early-check``) a short run at 2 × lr* evaluated every step, to catch the early
instability that a coarse eval cadence hides.
"""

from __future__ import annotations

import shlex
from typing import Any

from stabsweep.analysis.lr import LrFindings, lr_findings
from stabsweep.config.schema import Config
from stabsweep.procedures.context import Context
from stabsweep.records import TrialSpec, TrialStatus
from stabsweep.report import plots
from stabsweep.report.console import print_verdict, trials_table

COMMAND = "lr"


def plan(config: Config) -> list[TrialSpec]:
    """One trial per learning rate; every trial shares seed, steps, schedule and clipping."""
    train = config.train
    return [
        TrialSpec(
            trial_id=i,
            lr=lr,
            seed=config.seed,
            steps=train.steps,
            eval_every=train.eval_every,
            schedule=train.schedule,
            clip=train.clip,
            columns={"phase": "sweep"},
        )
        for i, lr in enumerate(config.lr_sweep.values())
    ]


def early_check_spec(config: Config, best_lr: float, trial_id: int) -> TrialSpec:
    sweep = config.lr_sweep
    return TrialSpec(
        trial_id=trial_id,
        lr=best_lr * sweep.early_check_multiplier,
        seed=config.seed,
        steps=min(sweep.early_check_steps, config.train.steps),
        eval_every=1,
        schedule=config.train.schedule,
        clip=config.train.clip,
        columns={"phase": "early_check"},
    )


def run(ctx: Context, early_check: bool = False) -> dict[str, Any]:
    config = ctx.config
    job = ctx.job()
    store = ctx.store(COMMAND)
    specs = plan(config)
    ctx.run_trials(specs, job, store, f"lr sweep ({len(specs)} rates)")
    trials, steps, evals = store.finalize()
    ctx.stop_if_nothing_trained(store, trials, COMMAND)
    sweep = trials[trials["phase"] == "sweep"]
    found = lr_findings(sweep)

    early: dict[str, Any] | None = None
    if early_check and found.best_lr is not None:
        spec = early_check_spec(config, found.best_lr, trial_id=len(specs))
        ctx.run_trials([spec], job, store, f"early check at lr={spec.lr:g}")
        trials, steps, evals = store.finalize()
        early = _early_summary(trials, spec)
        part = steps[steps["trial_id"] == spec.trial_id]
        plots.early_check(
            part, evals[evals["trial_id"] == spec.trial_id], spec.lr, store.folder / "plots" / "early_check.png"
        )

    summary = _summary(ctx, found, sweep, early)
    _plot(store.folder, sweep, steps, found)
    store.write_summary(summary)
    _report(ctx, sweep, found, summary, str(store.folder))
    return summary


def _early_summary(trials: Any, spec: TrialSpec) -> dict[str, Any]:
    row = trials[trials["trial_id"] == spec.trial_id].iloc[0]
    status = str(row["status"])
    return {
        "lr": spec.lr,
        "steps": spec.steps,
        "status": status,
        "reason": str(row["reason"]),
        "early_instability": TrialStatus.of(status) in (TrialStatus.DIVERGED, TrialStatus.UNSTABLE),
        "trial_id": spec.trial_id,
    }


def verdict(found: LrFindings) -> str:
    if found.best_lr is None:
        return "No learning rate in the grid trained: every trial was infeasible or failed."
    best = f"Best learning rate {found.best_lr:.3g} ({found.objective.replace('_', ' ')} {found.best_objective:.4g})"
    if found.unstable_base_lr is None:
        return f"{best}; no rate above it diverged or was unstable, so the grid does not reach the instability."
    return f"{best}; training becomes unstable at {found.unstable_base_lr:.3g} ({found.unstable_reason})."


def next_command(ctx: Context, found: LrFindings) -> str:
    config, root = ctx.config, str(ctx.run_root)
    grid = config.lr_sweep.values()
    if found.unstable_base_lr is not None:
        return f"stabsweep warmup --from {shlex.quote(root)}"
    source = shlex.quote(config.source)
    if found.best_lr is None:
        low = grid[0] / 1000
        return f"stabsweep lr {source} --set 'lr_sweep.lrs={{min: {low:g}, max: {grid[0]:g}, num: 7}}' --force"
    high = grid[-1] * 1000
    return f"stabsweep lr {source} --set 'lr_sweep.lrs={{min: {found.best_lr:g}, max: {high:g}, num: 7}}' --force"


def _summary(ctx: Context, found: LrFindings, sweep: Any, early: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "command": COMMAND,
        "config": ctx.config.source,
        "best_lr": found.best_lr,
        "unstable_base_lr": found.unstable_base_lr,
        "verdict": verdict(found),
        "infeasible_fraction": found.infeasible_fraction,
        "warnings": found.warnings,
        "objective": found.objective,
        "best_objective": found.best_objective,
        "best_trial_id": found.best_trial_id,
        "unstable_trial_id": found.unstable_trial_id,
        "unstable_reason": found.unstable_reason,
        "statuses": sweep["status"].value_counts().to_dict(),
        "early_check": early,
        "rules": {
            "best_lr": f"lowest {found.objective} among feasible (ok or unstable) trials",
            "unstable_base_lr": "smallest swept rate above best_lr whose trial is diverged or unstable",
            "detect": ctx.config.detect.model_dump(),
        },
        "next_command": next_command(ctx, found),
    }


def _plot(folder: Any, sweep: Any, steps: Any, found: LrFindings) -> None:
    out = folder / "plots"
    plots.hyperparameter_axis(
        sweep,
        "lr",
        found.objective,
        out / "lr_sweep.png",
        best=found.best_lr,
        unstable=found.unstable_base_lr,
        title="learning-rate sweep",
        xlabel="learning rate",
    )
    above = []
    if found.best_lr is not None:
        above = list(sweep[sweep["lr"] > found.best_lr].sort_values("lr")["trial_id"][:3])
    sweep_steps = steps[steps["trial_id"].isin(sweep["trial_id"])]
    plots.step_curves(
        sweep_steps,
        sweep,
        "train_loss",
        out / "loss_curves.png",
        best_id=found.best_trial_id,
        above_ids=above,
        smooth=20,
        title="training loss",
    )
    plots.step_curves(
        sweep_steps,
        sweep,
        "grad_norm",
        out / "grad_norms.png",
        best_id=found.best_trial_id,
        above_ids=above,
        title="gradient norm before clipping",
    )


def _report(ctx: Context, sweep: Any, found: LrFindings, summary: dict[str, Any], folder: str) -> None:
    marks = {}
    if found.best_trial_id is not None:
        marks[found.best_trial_id] = "lr*"
    if found.unstable_trial_id is not None:
        marks[found.unstable_trial_id] = "unstable base lr"
    columns = ["lr", "status", found.objective, "diverged_step", "reason"]
    ctx.console.print(trials_table(sweep, columns, "learning-rate sweep", marks))
    early = summary["early_check"]
    if early:
        ctx.console.print(
            f"Early check at lr={early['lr']:g} ({early['steps']} steps, eval every step): "
            f"{early['status']} — {early['reason']}"
        )
    print_verdict(ctx.console, summary["verdict"], summary["warnings"], summary["next_command"], folder)
