"""``stabsweep find``: the learning-rate range test, the suggestions, and the grid for ``lr``.

One short run per seed from the workload's initial weights with the config's optimizer, the
rate growing exponentially every step from ``find.min_lr`` to ``find.max_lr``, no schedule and
no clipping. Seeds run as one vectorized batch. The rules that read the curve are in
``analysis/find.py``; ``lr_sweep.lrs: auto`` runs this first and sweeps the grid it proposes.
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import Any

import numpy as np

from stabsweep.analysis.find import (
    against_full_training,
    find_suggestions,
    lowest_loss,
    lr_grid,
    median_curve,
    safe_suggestion,
    smoothed,
    verdict,
)
from stabsweep.analysis.gate import range_stability
from stabsweep.config.schema import Config, ScheduleConfig
from stabsweep.errors import UserError
from stabsweep.procedures.context import Context, seeds_of
from stabsweep.records import TrialSpec
from stabsweep.report import plots

COMMAND = "find"


def plan(config: Config) -> list[TrialSpec]:
    """One range test per seed: ``max_lr`` reached through the exponential ramp from ``min_lr``."""
    find = config.find
    ramp = ScheduleConfig(name="exponential", start_factor=find.min_lr / find.max_lr)
    return [
        TrialSpec(
            trial_id=k,
            lr=find.max_lr,
            seed=seed,
            steps=find.steps,
            eval_every=find.eval_every or find.steps,
            schedule=ramp,
            clip=None,
            columns={"phase": "range_test"},
        )
        for k, seed in enumerate(seeds_of(config, find.seeds))
    ]


def run(ctx: Context, inner: bool = False) -> dict[str, Any]:
    """The range test; ``inner`` when ``lr`` runs it for ``lrs: auto`` (its verdict is not printed)."""
    config, find = ctx.config, ctx.config.find
    factor = find.divergence_factor or config.detect.divergence_factor
    job = ctx.job()
    # The engine's own stop (a loss above factor × the first one) is a safety net; the range
    # test's stop rule reads the smoothed curve afterwards. Evals read a few batches only.
    job = dataclasses.replace(
        job,
        detect=config.detect.model_copy(update={"divergence_factor": factor}),
        factory=dataclasses.replace(job.factory, eval_batches=find.eval_batches),
    )
    store = ctx.store(COMMAND)
    specs = plan(config)
    seeds = f" × {find.seeds} seeds" if find.seeds > 1 else ""
    ctx.run_trials(specs, job, store, f"range test ({find.steps} steps, {find.min_lr:g} → {find.max_lr:g}{seeds})")
    trials, steps, evals = store.finalize()
    ctx.stop_if_nothing_trained(store, trials, COMMAND)

    uses_eval = find.eval_every > 0 and len(evals) and evals["eval_loss"].notna().any()
    curves, lrs = [], None
    for trial_id in trials["trial_id"]:
        part = steps[steps["trial_id"] == trial_id]
        if uses_eval:
            measured = evals[(evals["trial_id"] == trial_id) & (evals["step"] > 0)]
            at = part.set_index("step").loc[measured["step"], "lr"].to_numpy()
            curves.append(measured["eval_loss"].to_numpy(dtype=float))
            lrs = at if lrs is None or len(at) < len(lrs) else lrs
        else:
            curves.append(part["train_loss"].to_numpy(dtype=float))
            lrs = part["lr"].to_numpy() if lrs is None or len(part) < len(lrs) else lrs
    curve = median_curve(curves)
    skip = find.skip_begin // (find.eval_every or 1) if uses_eval else find.skip_begin
    found = find_suggestions(lrs[: len(curve)], curve, find.smoothing, factor, skip, "eval" if uses_eval else "train")
    if (
        found.divergence_lr is None and len(curve) < find.steps
    ):  # the engine stopped it: a loss above factor × its first
        found.divergence_lr, found.stop_step = float(lrs[len(curve) - 1]), len(curve)
    known = _lr_run_findings(ctx)
    unstable, best_lr = known.get("unstable_base_lr"), known.get("best_lr")
    instead = safe_suggestion(found.suggestions, find.suggestion, best_lr, unstable)
    suggested = instead[1] if instead else found.suggestions.get(find.suggestion)
    # The grid reaches 3× past where training is known to fail, not past the range test's blow-up only.
    edges = [rate for rate in (found.divergence_lr, unstable) if rate is not None]
    grid = lr_grid(suggested, min(edges) if edges else None, find.min_lr, find.max_lr)
    comparison = against_full_training(found.divergence_lr, unstable, float(lrs[len(curve) - 1]))
    _write_steps(store, trials, steps, evals if find.eval_every else evals.iloc[:0], find.smoothing)
    summary = _summary(ctx, found, suggested, grid, comparison)
    if instead is not None:
        summary["suggestion_above_unstable"] = {
            "suggestion": find.suggestion,
            "lr": found.suggestions[find.suggestion],
            "unstable_base_lr": unstable,
            "instead": {"name": instead[0], "lr": instead[1]},
        }
        summary["verdict"] = verdict(found, find.suggestion, comparison, unstable, best_lr, instead)
        summary["warnings"].append(
            f"the {find.suggestion} suggestion {found.suggestions[find.suggestion]:.3g} is at or above the unstable "
            f"rate {unstable:.3g} of the lr sweep in this folder; suggested_lr is {instead[0]} {instead[1]:.3g} instead"
        )
    ctx.plot(
        plots.range_test,
        store.read("steps.csv"),
        found,
        suggested,
        store.folder / "plots" / "range_test.png",
        title=ctx.title(COMMAND, "learning-rate range test"),
    )
    summary["warnings"] += ctx.plot_warnings
    store.write_summary(summary)
    if not inner:
        _report(ctx, summary, str(store.folder))
    return summary


def _lr_run_findings(ctx: Context) -> dict[str, Any]:
    """What a finished lr sweep under the same run folder found (its summary), or {}."""
    from stabsweep.results.runs import read_lr_run

    try:
        return read_lr_run(ctx.run_root).summary
    except UserError:
        return {}


def _write_steps(store: Any, trials: Any, steps: Any, evals: Any, beta: float) -> None:
    """steps.csv of a range test: with the seed, the smoothed loss and the eval loss where measured."""
    derived = [c for c in ("seed", "smoothed_loss", "eval_loss") if c in steps]  # written here by an earlier run
    steps = steps.drop(columns=derived).merge(trials[["trial_id", "seed"]], on="trial_id", how="left")
    steps["smoothed_loss"] = np.concatenate(
        [smoothed(part["train_loss"].to_numpy(dtype=float), beta) for _, part in steps.groupby("trial_id", sort=False)]
    )
    if len(evals):
        steps = steps.merge(evals[["trial_id", "step", "eval_loss"]], on=["trial_id", "step"], how="left")
    columns = ["trial_id", "seed", "step", "lr", "train_loss", "smoothed_loss", "grad_norm"]
    columns += ["eval_loss"] if "eval_loss" in steps else []
    steps[columns].to_csv(store.folder / "steps.csv", index=False)


def _summary(ctx: Context, found: Any, suggested: float | None, grid: dict, comparison: str | None) -> dict[str, Any]:
    find, source = ctx.config.find, shlex.quote(ctx.config.source)
    if found.dip:
        lrs = f"{{min: {grid['min']:g}, max: {grid['max']:g}, num: {grid['num']}}}"
        next_command = f"stabsweep lr {source} --set 'lr_sweep.lrs={lrs}'"
    else:
        wider = f"--set find.min_lr={find.min_lr / 100:g} --set find.max_lr={find.max_lr * 10:g}"
        next_command = f"stabsweep find {source} {wider} --force"
    return {
        "command": COMMAND,
        "config": ctx.config.source,
        "suggested_lr": suggested,
        "suggestion": find.suggestion,
        "suggestions": found.suggestions,
        "divergence_lr": found.divergence_lr,
        "stop_step": found.stop_step,
        "curve": found.curve,
        "lr_grid": grid,
        "against_lr_sweep": comparison,
        "seeds": find.seeds,
        "verdict": verdict(found, find.suggestion, comparison),
        "warnings": [],
        "rules": {
            "ramp": f"lr from {find.min_lr:g} to {find.max_lr:g}, times the same factor at each of {find.steps} steps",
            "smoothed": f"bias-corrected EMA, beta {find.smoothing:g}; the median over seeds",
            "stop": "smoothed loss non-finite or above divergence_factor × its lowest so far",
            "steepest": "steepest descent of the smoothed loss against log(lr)",
            "valley": "the middle of the longest decreasing run of the smoothed loss",
            "minimum_div_10": "a tenth of the rate at the lowest smoothed loss",
            "skip_begin": f"the first {find.skip_begin} steps are left out of the suggestions",
            "lr_grid": "100× below the suggestion to 3× past the divergence, two rates per decade",
        },
        "stability": range_stability(
            suggested,
            found.divergence_lr,
            lowest_loss(found),
            ctx.setup(steps=find.steps, seeds=find.seeds, min_lr=find.min_lr, max_lr=find.max_lr),
        ),
        "next_command": next_command,
    }


def _report(ctx: Context, summary: dict[str, Any], folder: str) -> None:
    from rich.table import Table

    table = Table(title="range test: suggestions", title_justify="left")
    for name in ("suggestion", "learning rate", "note"):
        table.add_column(name, justify="right" if name == "learning rate" else "left")
    for name, lr in summary["suggestions"].items():
        table.add_row(name, f"{lr:.3g}", "used" if name == summary["suggestion"] else "")
    if summary["divergence_lr"] is not None:
        table.add_row("divergence", f"{summary['divergence_lr']:.3g}", f"step {summary['stop_step']}")
    ctx.console.print(table)
    ctx.verdict(summary, folder)
