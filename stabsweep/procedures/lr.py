"""``stabsweep lr``: the learning-rate sweep that finds lr* and the unstable base rate.

Plan one trial per rate and seed, run them, apply the detection rules, then (with
``--early-check``) the first ``early_check_steps`` of the real run at 2 × lr*, evaluated
every step, to catch the early instability that a coarse eval cadence hides.
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import Any

from stabsweep.analysis.gate import stability_block
from stabsweep.analysis.lr import LrFindings, lr_findings, verdict
from stabsweep.analysis.spikes import data_spike_steps
from stabsweep.config.schema import Config
from stabsweep.procedures.context import Context, full_run, seeds_of
from stabsweep.records import TrialSpec, TrialStatus
from stabsweep.report import plots, sweep_plots
from stabsweep.report.console import trials_table

COMMAND = "lr"


def plan(config: Config, lrs: list[float] | None = None) -> list[TrialSpec]:
    """One trial per learning rate and seed; all share steps, schedule and clipping. Trials are
    numbered seed by seed (rate i of seed k is trial k × rates + i), so adding seeds to a
    sweep leaves the finished trials' numbers as they were."""
    lrs = lrs or config.lr_sweep.values()
    return [
        full_run(config, k * len(lrs) + i, lr, seed, {"phase": "sweep"})
        for k, seed in enumerate(seeds_of(config, config.lr_sweep.seeds))
        for i, lr in enumerate(lrs)
    ]


def early_check_spec(config: Config, best_lr: float, trial_id: int) -> TrialSpec:
    """The first ``early_check_steps`` of the real run (its full-length schedule, cut) at
    ``early_check_multiplier`` × lr*, evaluated every step."""
    sweep = config.lr_sweep
    spec = full_run(
        config,
        trial_id,
        best_lr * sweep.early_check_multiplier,
        config.seed,
        {"phase": "early_check"},
        steps=sweep.early_check_steps,
    )
    return dataclasses.replace(spec, eval_every=1)


def grid_of(ctx: Context) -> tuple[list[float], dict[str, Any] | None]:
    """The rates to sweep, and the range test they came from when ``lr_sweep.lrs`` is auto (its
    result under ``<out>/find/``, reused by ``--resume``; run first otherwise)."""
    if not ctx.config.lr_sweep.auto:
        return ctx.config.lr_sweep.values(), None
    import json

    from stabsweep.config.schema import LogGrid
    from stabsweep.procedures import find

    saved = ctx.run_root / find.COMMAND / "summary.json"
    found = json.loads(saved.read_text()) if ctx.options.resume and saved.is_file() else find.run(ctx, inner=True)
    grid = found["lr_grid"]
    ctx.console.print(
        f"Range test: suggested {found['suggested_lr']}, blew up at {found['divergence_lr']}: sweeping "
        f"{grid['num']} rates from {grid['min']:g} to {grid['max']:g}",
        markup=False,
    )
    return LogGrid(**grid).values(), found


def run(ctx: Context, early_check: bool = False) -> dict[str, Any]:
    config = ctx.config
    job = ctx.job()
    lrs, found_by_find = grid_of(ctx)
    store = ctx.store(COMMAND)
    specs = plan(config, lrs)
    stale = store.trials_of_phase("early_check") - {len(specs)}  # numbered for fewer seeds: lr* may move
    if stale:
        store.forget(stale)
    rates, seeds = len(lrs), config.lr_sweep.seeds
    label = f"lr sweep ({rates} rates" + (f" × {seeds} seeds)" if seeds > 1 else ")")
    ctx.run_trials(specs, job, store, label)
    trials, steps, evals = store.finalize()
    ctx.stop_if_nothing_trained(store, trials, COMMAND)
    sweep = trials[trials["phase"] == "sweep"]
    spikes = ctx.spikes(store, trials, steps)
    found = lr_findings(sweep, steps, data_spike_steps(spikes))

    early: dict[str, Any] | None = None
    if early_check and found.best_lr is not None:
        spec = early_check_spec(config, found.best_lr, trial_id=len(specs))
        ctx.run_trials([spec], job, store, f"early check at lr={spec.lr:g}")
        trials, steps, evals = store.finalize()
        early = early_summary(trials, spec, found)
        part = steps[steps["trial_id"] == spec.trial_id]
        ctx.plot(
            plots.early_check,
            part,
            evals[evals["trial_id"] == spec.trial_id],
            spec.lr,
            store.folder / "plots" / "early_check.png",
            title=ctx.title(COMMAND, f"early check: the first {spec.steps} steps at {spec.lr:.3g}"),
        )

    summary = _summary(ctx, found, sweep, early, lrs)
    ctx.add_spikes(summary, spikes, trials)
    if found_by_find is not None:
        summary.update(lr_grid_source="find", lr_grid=found_by_find["lr_grid"])
    _plot(ctx, store.folder, sweep, steps, found)
    ctx.sharpness(store, sweep, summary, COMMAND)
    summary["warnings"] += ctx.plot_warnings
    store.write_summary(summary)
    _report(ctx, sweep, found, summary, str(store.folder))
    return summary


def early_summary(trials: Any, spec: TrialSpec, found: LrFindings) -> dict[str, Any]:
    """The early check's outcome. Only an early instability counts as one: a divergence or a
    rise of the loss in the first ``detect.early_fraction`` of the real run's steps."""
    row = trials[trials["trial_id"] == spec.trial_id].iloc[0]
    status = TrialStatus.of(row["status"])
    early = status.instability and row.get("instability") == "early"
    out = {
        "lr": spec.lr,
        "multiplier": spec.lr / found.best_lr,
        "steps": spec.steps,
        "of_steps": spec.run_steps,
        "status": status.value,
        "reason": str(row["reason"]),
        "early_instability": bool(early),
        "trial_id": spec.trial_id,
    }
    if early:
        out["verdict"] = (
            f"{spec.lr / found.best_lr:g} × lr* = {spec.lr:.3g} is unstable in the first {spec.steps} steps of the "
            f"real run ({row['reason']}): lr* {found.best_lr:.3g} itself is at risk; a small change or another "
            "seed could tip it over. A warmup protects the start of training."
        )
    else:
        out["verdict"] = f"{spec.lr:.3g} trains through the first {spec.steps} steps without an early instability."
    return out


def next_command(ctx: Context, found: LrFindings, grid: list[float]) -> str:
    config, root = ctx.config, str(ctx.run_root)
    source = shlex.quote(config.source)
    lowest = found.rates[0] if found.rates else None
    if found.best_lr is None or found.rate_independent or (lowest and lowest[TrialStatus.DIVERGED.value]):
        # nothing trains, a failure the rate does not explain, or even the lowest rate blows
        # up: rule out a bug in the data, loss or model before sweeping further
        return f"stabsweep doctor {source}"
    if found.unstable_base_lr is not None:
        return f"stabsweep warmup --from {shlex.quote(root)}"
    high = grid[-1] * 1000
    return f"stabsweep lr {source} --set 'lr_sweep.lrs={{min: {found.best_lr:g}, max: {high:g}, num: 7}}' --force"


def _summary(
    ctx: Context, found: LrFindings, sweep: Any, early: dict[str, Any] | None, grid: list[float]
) -> dict[str, Any]:
    text = verdict(found, ctx.epoch_length)
    if early is not None and early["early_instability"]:
        text += " " + early["verdict"]
    return {
        "command": COMMAND,
        "config": ctx.config.source,
        "best_lr": found.best_lr,
        "unstable_base_lr": found.unstable_base_lr,
        "unstable_kind": found.unstable_kind,
        "p_unstable": found.p_unstable,
        "verdict": text,
        "infeasible_fraction": found.infeasible_fraction,
        "warnings": list(found.warnings),
        "objective": found.objective,
        "best_objective": found.best_objective,
        "best_trial_id": found.best_trial_id,
        "unstable_trial_id": found.unstable_trial_id,
        "unstable_reason": found.unstable_reason,
        "seeds": ctx.config.lr_sweep.seeds,
        "edge_rates": found.edge_rates,
        "rates": found.rates,
        "statuses": {str(k): int(v) for k, v in sweep["status"].value_counts().items()},
        "early_check": early,
        "rate_independent": _with_batch(found.rate_independent, ctx.epoch_length),
        "rules": {
            "feasible_rate": "every seed's trial is ok or unstable",
            "best_lr": f"the feasible rate with the lowest mean {found.objective} over its seeds",
            "unstable_base_lr": "smallest rate above best_lr where any seed diverged, was unstable or learned nothing",
            "p_unstable": "share of a rate's seeds that diverged, were unstable or learned nothing",
            "noise": "a rise counts only beyond the curve's own noise: the trend (median of 2 × smoothing + 1 "
            "batch losses) rising by noise_sigma × √(2 ln(steps / smoothing)) of its noise, or an isolated spike "
            "(spike_ratio × any other excursion); a loss above divergence_factor × initial must stay there "
            "divergence_patience more steps to diverge (one batch that falls back is a spike: spike_step)",
            "rate_independent": "every rate over two decades or more failing at the same step (one batch), or "
            "every rate's loss non-finite within the first steps from a finite start: the data, the loss or the "
            "model's numerics, not the rate; trials unstable only at that step count as ok for their rate",
            "early_check": "the first early_check_steps of the real run at early_check_multiplier × lr*; an early "
            "instability is a divergence or a rise in the first detect.early_fraction of the real run",
            "detect": ctx.config.detect.model_dump(),
        },
        "lr_grid_source": "config",
        "stability": stability_block(
            found.best_lr,
            found.unstable_base_lr,
            found.best_objective,
            found.objective,
            found.rates,
            ctx.setup(steps=ctx.config.train.steps + ctx.config.train.warmup_steps, seeds=ctx.config.lr_sweep.seeds),
        ),
        "next_command": next_command(ctx, found, grid),
    }


def _with_batch(found: dict[str, Any] | None, epoch_length: int | None) -> dict[str, Any] | None:
    """The rate-independent failure for summary.json, with the batch's place in the data when known."""
    if found is None or found["kind"] != "same_step" or not epoch_length:
        return found
    step = found["step"]
    return {**found, "epoch": (step - 1) // epoch_length, "batch": (step - 1) % epoch_length}


def _plot(ctx: Context, folder: Any, sweep: Any, steps: Any, found: LrFindings) -> None:
    out = folder / "plots"
    line = sweep_plots.series_points(sweep, "lr", found.objective, "lr sweep", "tab:blue", found.unstable_base_lr)
    ctx.plot(
        sweep_plots.rate_axis,
        [line],
        out / "lr_sweep.png",
        best=found.best_lr,
        title=ctx.title(COMMAND, "learning-rate sweep"),
        xlabel="learning rate (log scale)",
        ylabel=found.objective.replace("_", " "),
    )
    above = []
    if found.best_lr is not None:
        rates = sorted(r for r in sweep["lr"].unique() if r > found.best_lr)[:3]
        above = list(sweep[sweep["lr"].isin(rates)]["trial_id"])
    sweep_steps = steps[steps["trial_id"].isin(sweep["trial_id"])]
    for column, name, smooth, label in (
        ("train_loss", "loss_curves.png", 20, "training loss, every trial"),
        ("grad_norm", "grad_norms.png", 1, "gradient norm before clipping, every trial"),
    ):
        ctx.plot(
            plots.step_curves,
            sweep_steps,
            sweep,
            column,
            out / name,
            best_id=found.best_trial_id,
            above_ids=above,
            smooth=smooth,
            title=ctx.title(COMMAND, label),
        )


def _report(ctx: Context, sweep: Any, found: LrFindings, summary: dict[str, Any], folder: str) -> None:
    marks = {}
    if found.best_trial_id is not None:
        marks[found.best_trial_id] = "lr*"
    if found.unstable_trial_id is not None:
        marks[found.unstable_trial_id] = "unstable base lr"
    if ctx.config.lr_sweep.seeds > 1:
        ctx.console.print(rates_table(found))
    else:
        columns = ["lr", "status", found.objective, "diverged_step", "reason"]
        ctx.console.print(trials_table(sweep, columns, "learning-rate sweep", marks))
    early = summary["early_check"]
    if early:
        ctx.console.print(
            f"Early check at lr={early['lr']:g} (the first {early['steps']} of {early['of_steps']} steps, "
            f"eval every step): {early['status']} — {early['reason']}"
        )
    ctx.verdict(summary, folder)


def rates_table(found: LrFindings) -> Any:
    """The per-rate table of a sweep with several seeds."""
    from rich.table import Table

    table = Table(title="learning-rate sweep, per rate over its seeds", title_justify="left")
    headers = ["lr", "seeds", *(status.value.replace("_", " ") for status in TrialStatus), "p_unstable", "objective"]
    for name in headers:
        table.add_column(name, justify="right")
    table.add_column("note")
    for rate in found.rates:
        objective = (
            "–" if rate["objective_mean"] is None else f"{rate['objective_mean']:.4g} ± {rate['objective_std']:.2g}"
        )
        note = "lr*" if rate["lr"] == found.best_lr else ""
        note = "unstable base lr" if rate["lr"] == found.unstable_base_lr else note
        note += " (at the edge)" if rate["lr"] in found.edge_rates else ""
        table.add_row(
            f"{rate['lr']:.4g}",
            str(rate["seeds"]),
            *(str(rate[status.value]) for status in TrialStatus),
            "–" if rate["p_unstable"] is None else f"{rate['p_unstable']:.0%}",
            objective,
            note.strip(),
        )
    return table
