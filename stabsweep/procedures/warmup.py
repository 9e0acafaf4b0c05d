"""``stabsweep warmup``: the shortest warmup that lets a 10× higher learning rate train.

The playbook's recipe: take the unstable base rate from the lr sweep, multiply it (10× by
default), and probe linear warmups of increasing length: each probe ramps from 0 to
``base_lr`` over ``warmup_steps`` and then holds ``base_lr`` for ``post_warmup_steps`` =
2 × ``warmup_steps``. A no-warmup baseline at each base rate shows what warmup fixes. The
rules that pick a warmup from the probes are in ``analysis/warmup.py``; a confirm run then
trains the full schedule with that warmup prepended, every seed, and is compared with the
lr sweep's best trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stabsweep.analysis.warmup import WarmupPick, confirm_summary, picks, verdict
from stabsweep.config.schema import Config, ScheduleConfig
from stabsweep.errors import UserError
from stabsweep.procedures.context import Context, full_run, seeds_of
from stabsweep.records import TrialSpec
from stabsweep.report import plots, sweep_plots
from stabsweep.report.console import trials_table
from stabsweep.results.runs import LrRun

COMMAND = "warmup"
POST_WARMUP_FACTOR = 2  # post_warmup_steps = 2 × warmup_steps
CONFIRM_IDS = 100_000  # confirm runs are numbered from here, after any number of probes


@dataclass(frozen=True)
class WarmupPlan:
    unstable_base_lr: float
    base_lrs: list[float]
    warmup_steps: list[int]  # the candidates kept
    dropped: list[int]  # candidates above max_fraction × train.steps
    probes: list[TrialSpec] = field(default_factory=list)


def plan(config: Config, unstable_base_lr: float) -> WarmupPlan:
    """Baseline and probes per base rate and seed; candidates above 10% of train.steps are dropped."""
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
    settings = [(m, b, w) for m, b in zip(sweep.multipliers, base_lrs, strict=True) for w in (0, *kept)]
    probes = []
    for k, seed in enumerate(seeds_of(config, sweep.seeds)):  # seed by seed: more seeds keep the numbers
        for i, (multiplier, base_lr, w) in enumerate(settings):
            steps = (1 + POST_WARMUP_FACTOR) * w if w else longest
            probes.append(
                TrialSpec(
                    trial_id=k * len(settings) + i,
                    lr=base_lr,
                    seed=seed,
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


def confirm_specs(
    config: Config, base_lr: float, multiplier: float, warmup_steps: int, attempt: int
) -> list[TrialSpec]:
    """The full run, every seed: the config's own schedule with the warmup prepended (train.steps + warmup).
    The warmup found here replaces any ``train.warmup_steps`` of the config: it is what is being tried."""
    config = config.model_copy(update={"train": config.train.model_copy(update={"warmup_steps": 0})})
    seeds = seeds_of(config, config.warmup_sweep.seeds)
    columns = {
        "phase": "confirm",
        "multiplier": multiplier,
        "base_lr": base_lr,
        "warmup_steps": warmup_steps,
        "post_warmup_steps": config.train.steps,
    }
    return [
        full_run(config, CONFIRM_IDS + attempt * len(seeds) + k, base_lr, seed, columns, warmup=warmup_steps)
        for k, seed in enumerate(seeds)
    ]


def run(ctx: Context, unstable_base_lr: float, lr_run: LrRun | None) -> dict[str, Any]:
    config = ctx.config
    the_plan = plan(config, unstable_base_lr)
    job = ctx.job()
    store = ctx.store(COMMAND)
    _print_plan(ctx, the_plan)
    ctx.run_trials(the_plan.probes, job, store, f"warmup probes at {', '.join(f'{b:g}' for b in the_plan.base_lrs)}")
    trials, steps, _ = store.finalize()
    ctx.stop_if_nothing_trained(store, trials, COMMAND)
    by_rate = picks(trials)
    pick = _highest_working(by_rate) or by_rate[min(by_rate)]

    confirms: list[dict[str, Any]] = []
    if config.warmup_sweep.confirm and not pick.baseline_ok:
        multiplier = config.warmup_sweep.multipliers[the_plan.base_lrs.index(pick.base_lr)]
        for attempt, warmup_steps in enumerate(pick.candidates):  # the next-longer one when a confirm fails
            specs = confirm_specs(config, pick.base_lr, multiplier, warmup_steps, attempt)
            ctx.run_trials(specs, job, store, f"confirm: warmup {warmup_steps} at lr={pick.base_lr:g}")
            trials, steps, _ = store.finalize()
            confirms.append(confirm_summary(trials, specs, lr_run.summary if lr_run else None))
            if confirms[-1]["holds"]:
                break
    held = next((c for c in confirms if c["holds"]), None)
    recommended = 0 if pick.baseline_ok else held["warmup_steps"] if held else (None if confirms else pick.recommended)

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
        "base_lr": pick.base_lr,
        "recommended_warmup_steps": recommended,
        "baseline_ok": pick.baseline_ok,
        "seeds": config.warmup_sweep.seeds,
        "picks": [
            {
                "base_lr": p.base_lr,
                "baseline_ok": p.baseline_ok,
                "working": p.working,
                "recommended_warmup_steps": p.recommended,
                "lucky": p.lucky,
            }
            for p in by_rate.values()
        ],
        "warmup_steps_probed": the_plan.warmup_steps,
        "warmup_steps_dropped": the_plan.dropped,
        "confirm": held or (confirms[-1] if confirms else None),
        "confirms": confirms,
        "verdict": verdict(pick, unstable_base_lr, confirms, config.warmup_sweep.multipliers),
        "warnings": warnings,
        "rules": {
            "works": "every seed's probe with that warmup is ok",
            "pick": "the shortest warmup that works after which every longer candidate works too",
            "baseline": "when the no-warmup baseline works, no warmup is needed at that rate",
            "confirm": "the full schedule with the warmup prepended, every seed ok; else the next-longer pick",
            "probe": f"linear ramp 0 → base_lr over warmup_steps, then base_lr for {POST_WARMUP_FACTOR} × warmup_steps",
            "dropped": f"candidates above {config.warmup_sweep.max_fraction:.0%} of train.steps",
            "detect": config.detect.model_dump(),
        },
        "next_command": f"stabsweep clip-report {ctx.run_root}" + (" --sweep" if recommended is None else ""),
    }
    _plot(ctx, store.folder, trials, steps, lr_run, by_rate)
    ctx.add_spikes(summary, ctx.spikes(store, trials, steps), trials)
    ctx.sharpness(store, trials, summary, COMMAND)
    summary["warnings"] += ctx.plot_warnings
    store.write_summary(summary)
    _report(ctx, trials, summary, str(store.folder))
    return summary


def _highest_working(by_rate: dict[float, WarmupPick]) -> WarmupPick | None:
    """The highest base rate where a warmup works (or none is needed)."""
    working = [p for p in by_rate.values() if p.candidates or p.baseline_ok]
    return max(working, key=lambda p: p.base_lr) if working else None


def _print_plan(ctx: Context, the_plan: WarmupPlan) -> None:
    import pandas as pd

    first_seed = [s for s in the_plan.probes if s.seed == ctx.config.seed]
    rows = pd.DataFrame([{"trial_id": s.trial_id, "lr": s.lr, **s.columns, "steps": s.steps} for s in first_seed])
    columns = ["base_lr", "warmup_steps", "post_warmup_steps", "steps"]
    seeds = ctx.config.warmup_sweep.seeds
    each = f"; each with {seeds} seeds" if seeds > 1 else ""
    title = f"warmup plan (unstable base lr {the_plan.unstable_base_lr:.3g}; warmup 0 = no-warmup baseline{each})"
    ctx.console.print(trials_table(rows, columns, title))
    if the_plan.dropped:
        ctx.console.print(
            f"[dim]dropped (above {ctx.config.warmup_sweep.max_fraction:.0%} of train.steps): {the_plan.dropped}[/]"
        )


def _plot(
    ctx: Context, folder: Any, trials: Any, steps: Any, lr_run: LrRun | None, by_rate: dict[float, WarmupPick]
) -> None:
    out = folder / "plots"
    probes = trials[trials["phase"] == "probe"]
    recommended = {rate: pick.recommended for rate, pick in by_rate.items()}
    ctx.plot(
        sweep_plots.warmup_axis, probes, out / "warmup_sweep.png", recommended, title=ctx.title(COMMAND, "warmup sweep")
    )
    lr_trials = lr_run.trials() if lr_run is not None else None
    ctx.plot(
        sweep_plots.base_rate,
        trials,
        lr_trials,
        out / "base_rate.png",
        title=ctx.title(COMMAND, "with and without warmup"),
    )
    first_seed = probes[probes["seed"] == probes["seed"].min()]
    probe_steps = steps[steps["trial_id"].isin(first_seed["trial_id"])]
    ctx.plot(
        plots.step_curves,
        probe_steps,
        first_seed,
        "train_loss",
        out / "probe_curves.png",
        label="warmup_steps",
        smooth=5,
        baseline="no warmup",
        title=ctx.title(COMMAND, "warmup probes: training loss"),
    )


def _report(ctx: Context, trials: Any, summary: dict[str, Any], folder: str) -> None:
    marks = {}
    for confirm in summary["confirms"]:
        for trial_id in confirm["trial_ids"]:
            marks[trial_id] = "confirm (holds)" if confirm["holds"] else "confirm (did not hold)"
    for _, row in trials.iterrows():
        if (
            row["phase"] == "probe"
            and row["base_lr"] == summary["base_lr"]
            and row["warmup_steps"] == summary["recommended_warmup_steps"]
        ):
            marks[int(row["trial_id"])] = "pick"
    columns = ["phase", "base_lr", "warmup_steps", "seed", "status", "best_eval_loss", "reason"]
    if ctx.config.warmup_sweep.seeds == 1:
        columns.remove("seed")
    ctx.console.print(trials_table(trials, columns, "warmup sweep", marks))
    ctx.verdict(summary, folder)
