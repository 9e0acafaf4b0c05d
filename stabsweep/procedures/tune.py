"""``stabsweep tune``: the whole procedure in one command.

Stages, each written where its own command writes it (and resumed as that command resumes,
so a finished stage retrains nothing): ``lr`` (with the range test first when ``lr_sweep.lrs`` is auto) →
``warmup`` from the lr run → ``clip-report --sweep`` from the lr run → **confirm**: one lr
sweep per mitigation (none, the picked warmup, the picked clip threshold, both) on the lr
grid extended upward to at least the multiplier × the unstable rate, all as one vectorized
computation where the model allows. The choice of mitigation is ``analysis/tune.py``'s; the
result is the stability frontier plot, ``summary.json`` and ``recommended.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stabsweep.analysis.gate import stability_block
from stabsweep.analysis.lr import lr_findings
from stabsweep.analysis.spikes import data_spike_steps
from stabsweep.analysis.tune import (
    MITIGATIONS,
    Choice,
    Mitigated,
    choose,
    describe,
    gains,
    uses_clip,
    uses_skip,
    uses_warmup,
    verdict,
)
from stabsweep.config.schema import ClipConfig, Config, SkipSpikesConfig
from stabsweep.errors import StalePlan
from stabsweep.procedures import clip, lr, warmup
from stabsweep.procedures.context import Context, full_run, seeds_of
from stabsweep.records import TrialSpec
from stabsweep.report import sweep_plots
from stabsweep.report.console import print_verdict
from stabsweep.results.runs import read_lr_run
from stabsweep.workloads.factory import factory_seen_from

COMMAND = "tune"
# The trial numbering of the confirm sweeps: skip, added last, leaves the others' ids as they were.
NUMBERED = ("none", "warmup", "clip", "both", "skip")
COLORS = {"none": "0.45", "warmup": "tab:blue", "clip": "tab:orange", "skip": "tab:purple", "both": "tab:green"}


def _stage(ctx: Context, name: str, run: Any) -> dict[str, Any]:
    """Run one stage as its own command would, into its own folder. On --resume its store
    keeps what finished (and refuses a changed config), so a finished stage retrains nothing:
    it reads its trials back and states its findings again, with any seeds added since."""
    ctx.console.print(f"── {name}", markup=False)
    ctx.plot_warnings.clear()  # each stage's summary carries its own plots' warnings
    ctx.within = COMMAND
    try:
        return _resumed(ctx, name, run)
    finally:
        ctx.within = None


def _resumed(ctx: Context, name: str, run: Any) -> Any:
    """``run()``; on --resume, a stage whose finished trials no longer fit its plan, because a
    finding it builds on moved (more seeds moved the unstable rate, or the norms a threshold
    is read from), starts over, and says so. Only that stage: the others keep their trials."""
    try:
        return run()
    except StalePlan as exc:
        if not ctx.options.resume:
            raise
        ctx.console.print(f"{name}: {exc.message.removeprefix('--resume: ')}: the stage starts over", markup=False)
        resume = ctx.options
        ctx.options = dataclasses.replace(resume, resume=False, force=True)
        try:
            return run()
        finally:
            ctx.options = resume


@dataclass
class Picked:
    """The warmup and the clip threshold the confirm sweeps try, where each came from, and notes
    for the user when a stage recommended nothing.

    A stage that recommended nothing still gives the confirm something to try: the longest warmup
    probed (no warmup worked at the multiplied rate, but one may well at the lower rates of the
    grid) and the norm report's threshold (no threshold rescued the unstable rate). The confirm
    sweeps judge them like any other."""

    warmup_steps: int | None
    clip_threshold: float | None
    warmup_from: str = ""
    clip_from: str = ""
    notes: list[str] = field(default_factory=list)
    skip: SkipSpikesConfig = field(default_factory=SkipSpikesConfig)  # the skip mitigation's rule

    def applied(self, mitigation: str) -> tuple[int | None, float | None]:
        """The warmup steps and the clip threshold a mitigation trains with (None: not that part)."""
        return (
            self.warmup_steps if uses_warmup(mitigation) else None,
            self.clip_threshold if uses_clip(mitigation) else None,
        )


def picked(
    run_root: Path, warmup_summary: dict[str, Any], clip_summary: dict[str, Any], skip: SkipSpikesConfig | None = None
) -> Picked:
    """What the confirm sweeps try, by the rule of :class:`Picked`."""
    notes = []
    warmup_steps = warmup_summary.get("recommended_warmup_steps")
    warmup_from = f"the warmup stage's pick ({run_root / 'warmup' / 'summary.json'})"
    if warmup_steps is None and warmup_summary.get("warmup_steps_probed"):
        warmup_steps = max(warmup_summary["warmup_steps_probed"])
        warmup_from = f"the longest warmup probed: none worked at {warmup_summary.get('base_lr', 0):.3g}"
        notes.append(
            f"no warmup worked at {warmup_summary.get('base_lr', 0):.3g}; the confirm sweeps try the longest probed "
            f"({warmup_steps} steps) at every rate"
        )
    elif warmup_steps == 0:
        notes.append("no warmup needed at the warmup stage's rate: the confirm sweeps run no warmup mitigation")
    threshold = clip_summary.get("recommended_threshold")
    clip_from = f"the clip stage's recommended threshold ({run_root / 'clip' / 'summary.json'})"
    if threshold is None and clip_summary.get("threshold") is not None:
        threshold = clip_summary["threshold"]
        percentile = f"p{clip_summary.get('percentile', 90):g}"
        clip_from = f"{percentile} of the unclipped gradient norms: no threshold rescued the unstable rate"
        notes.append(
            f"no clip threshold rescued the unstable rate; the confirm sweeps try {percentile} of the norms "
            f"({threshold:.3g}) at every rate"
        )
    return Picked(warmup_steps or None, threshold, warmup_from, clip_from, notes, skip or SkipSpikesConfig())


def confirm_grid(lr_grid: list[float], best_lr: float, unstable: float, multiplier: float) -> list[float]:
    """The lr grid from a decade below lr*, extended upward at its own spacing to at least
    ``multiplier`` × the unstable rate."""
    grid = sorted(r for r in lr_grid if r >= best_lr / 10.0001)
    ratio = grid[-1] / grid[-2] if len(grid) > 1 else math.sqrt(10)
    while grid[-1] < multiplier * unstable * 0.999:
        grid.append(float(f"{grid[-1] * ratio:.6g}"))
    return grid


def plan(config: Config, grid: list[float], pick: Picked) -> list[TrialSpec]:
    """Every rate and seed under every mitigation whose parts were found (one missing part
    leaves out the mitigations that need it)."""
    seeds = seeds_of(config, config.lr_sweep.seeds)
    specs = []
    for m, name in enumerate(NUMBERED):
        warm, clipped = pick.applied(name)
        if (uses_warmup(name) and not warm) or (uses_clip(name) and not clipped):
            continue
        columns = {"phase": "confirm", "mitigation": name, "warmup_steps": warm or 0, "clip_threshold": clipped}
        clip = ClipConfig(threshold=clipped) if clipped else config.train.clip
        skip = pick.skip if uses_skip(name) else config.train.skip_spikes
        for k, seed in enumerate(seeds):
            for i, rate in enumerate(grid):
                trial_id = (m * len(seeds) + k) * len(grid) + i
                specs.append(full_run(config, trial_id, rate, seed, columns, warmup=warm or 0, clip=clip, skip=skip))
    return specs


def run(ctx: Context, multiplier: float | None = None) -> dict[str, Any]:
    config = ctx.config
    multiplier = multiplier or max(config.warmup_sweep.multipliers)
    lr_summary = _stage(ctx, "lr", lambda: lr.run(ctx))
    unstable = lr_summary.get("unstable_base_lr")
    if unstable is None or lr_summary.get("best_lr") is None or lr_summary.get("rate_independent"):
        return _nothing_to_mitigate(ctx, lr_summary)
    lr_run = read_lr_run(ctx.run_root)
    warmup_summary = _stage(ctx, "warmup", lambda: warmup.run(ctx, float(unstable), lr_run))
    clip_summary = _stage(
        ctx, "clip", lambda: clip.run(ctx, lr_run, trial_id=None, lr=None, percentile=None, sweep=True)
    )
    pick = picked(ctx.run_root, warmup_summary, clip_summary, config.train.skip_spikes)
    notes = pick.notes
    for note in notes:
        ctx.console.print(note, markup=False)
    ctx.plot_warnings.clear()

    ctx.console.print("── confirm", markup=False)
    grid = confirm_grid(sorted(lr_run.trials()["lr"].unique()), lr_summary["best_lr"], unstable, multiplier)
    specs = plan(config, grid, pick)
    names = sorted({s.columns["mitigation"] for s in specs}, key=MITIGATIONS.index)

    def train() -> Any:
        store = ctx.store(COMMAND)
        ctx.run_trials(specs, ctx.job(), store, f"confirm: {len(grid)} rates × {', '.join(names)}")
        return store

    store = _resumed(ctx, "confirm", train)
    trials, steps, _ = store.finalize()
    ctx.stop_if_nothing_trained(store, trials, COMMAND)
    spikes = ctx.spikes(store, trials, steps)
    data_spikes = data_spike_steps(spikes)

    aggressive_fraction = config.clip_sweep.aggressive_fraction
    mitigated = {}
    for name in names:
        part = trials[trials["mitigation"] == name]
        found = lr_findings(part, data_spikes=data_spikes)
        at_best = part[part["lr"] == found.best_lr] if found.best_lr is not None else part.iloc[:0]
        clipped = float(at_best["clipped_fraction"].mean()) if uses_clip(name) and len(at_best) else None
        aggressive = clipped is not None and clipped > aggressive_fraction
        mitigated[name] = Mitigated(name, found, clipped, aggressive, max(grid))
    choice = choose(mitigated)
    range_gain, objective_gain = gains(choice)
    chosen = choice.chosen
    used_warmup, used_clip = pick.applied(chosen.name) if chosen else (None, None)
    recommended_path = store.folder / "recommended.yaml"
    if chosen is not None and chosen.findings.best_lr is not None:
        recommended_path.write_text(_recommended(config, store.folder, chosen, pick, choice))
    summary = {
        "command": COMMAND,
        "config": config.source,
        "multiplier": multiplier,
        "grid": grid,
        "before": choice.before.brief(),
        "after": chosen.brief() if chosen else None,
        "chosen": chosen.name if chosen else None,
        "mitigation": {"warmup_steps": used_warmup, "clip_threshold": used_clip},
        "picked": {"warmup_steps": pick.warmup_steps, "clip_threshold": pick.clip_threshold},
        "stable_range_gain": range_gain,
        "objective_gain": objective_gain,
        "mitigations": [m.as_dict() for m in mitigated.values()],
        "recommended_config": str(recommended_path) if recommended_path.exists() else None,
        "stability": _stability(ctx, chosen or choice.before, config.train.steps + config.train.warmup_steps),
        "verdict": verdict(choice, used_warmup, used_clip, pick.skip),
        "warnings": notes,
        "rules": {
            "choice": choice.reason,
            "candidates": "mitigations with a feasible best rate; clipping that bites on more than "
            f"{aggressive_fraction:.0%} of steps at its best rate is not a candidate",
            "stable_range_gain": "the chosen mitigation's unstable base rate ÷ none's; '>grid' when the chosen one "
            "was stable across the whole grid",
            "objective_gain": "relative fall of the best objective against none",
        },
        "next_command": f"stabsweep lr {shlex.quote(str(recommended_path))}"
        if recommended_path.exists()
        else f"stabsweep doctor {shlex.quote(config.source)}",
    }
    ctx.add_spikes(summary, spikes, trials)
    ctx.sharpness(store, trials, summary, COMMAND)
    series = [
        sweep_plots.series_points(
            trials[trials["mitigation"] == name],
            "lr",
            m.findings.objective,
            name,
            COLORS[name],
            m.findings.unstable_base_lr,
        )
        for name, m in mitigated.items()
    ]
    ctx.plot(
        sweep_plots.rate_axis,
        series,
        store.folder / "plots" / "frontier.png",
        best=chosen.findings.best_lr if chosen else None,
        best_label=f"best rate ({chosen.name})" if chosen else "lr*",
        title=ctx.title(COMMAND, "the stability frontier, with and without each fix"),
        xlabel="base learning rate (log scale)",
        ylabel=f"{mitigated['none'].findings.objective.replace('_', ' ')}",
    )
    summary["warnings"] += ctx.plot_warnings
    store.write_summary(summary)
    _report(ctx, summary, str(store.folder))
    return summary


def _stability(ctx: Context, m: Mitigated, steps: int) -> dict[str, Any]:
    """The gate compares the chosen mitigation's findings (or plain training's when none trained)."""
    f = m.findings
    setup = ctx.setup(steps=steps, seeds=ctx.config.lr_sweep.seeds, mitigation=m.name)
    return stability_block(f.best_lr, f.unstable_base_lr, f.best_objective, f.objective, f.rates, setup)


def _recommended(config: Config, folder: Path, chosen: Mitigated, pick: Picked, choice: Choice) -> str:
    """The user's config (the keys they wrote) with the chosen mitigation applied and the lr grid
    centred on the new best rate, under a header that says where each value came from."""
    best = chosen.findings.best_lr
    warmup_steps, clip = pick.applied(chosen.name)
    data = config.model_dump(mode="json", exclude_unset=True)
    data["name"] = f"{config.name}-tuned"
    train = data.setdefault("train", {})
    train["warmup_steps"] = config.train.warmup_steps + (warmup_steps or 0)
    if clip:
        train["clip"] = {"threshold": float(f"{clip:.6g}")}
    if uses_skip(chosen.name):
        train["skip_spikes"] = pick.skip.model_dump()
    moved = factory_seen_from(config.workload, config.source, folder)
    if moved:  # a file path resolves from the config's folder: from the new file's now
        data["workload"]["factory"] = moved
    data.setdefault("lr_sweep", {})["lrs"] = {
        "min": float(f"{best / 10:.3g}"),
        "max": float(f"{best * 10:.3g}"),
        "num": 5,
    }
    found = chosen.findings
    edge = "no rate of the grid" if found.unstable_base_lr is None else f"{found.unstable_base_lr:.3g}"
    header = [
        f"# Recommended by stabsweep tune {config.source}: {describe(chosen.name, warmup_steps, clip, pick.skip)}.",
        f"# The confirm sweeps trained it best at lr={best:.3g} ({found.objective} {found.best_objective:.4g}); "
        f"unstable at {edge}.",
        f"# Chosen as {choice.reason}.",
        f"# train.warmup_steps: {train['warmup_steps']} (a linear warmup before the schedule): "
        + (pick.warmup_from if warmup_steps else "no warmup added"),
        "# train.clip: " + (f"{clip:.4g}, {pick.clip_from}" if clip else "as in the original config"),
        f"# lr_sweep.lrs: a decade either side of the best rate, {best:.3g}: train with it, or sweep again with",
        f"#   stabsweep lr {shlex.quote(str(folder / 'recommended.yaml'))}",
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False)


def _nothing_to_mitigate(ctx: Context, lr_summary: dict[str, Any]) -> dict[str, Any]:
    """No unstable rate in the grid, nothing trained, or a failure the rate does not explain
    (the data's, the loss's, the numerics'): a verdict, not an error."""
    store = ctx.store(COMMAND)
    if lr_summary.get("rate_independent"):
        text = (
            f"Not tuned: {lr_summary['verdict']} Warmup and clipping do not fix a fault of the data, the loss or "
            "the numerics: find it first."
        )
        next_command = f"stabsweep doctor {shlex.quote(ctx.config.source)}"
    elif lr_summary.get("best_lr") is None:
        text = "Nothing to tune: no rate of the lr sweep trained. Run stabsweep doctor to rule out a bug first."
        next_command = f"stabsweep doctor {shlex.quote(ctx.config.source)}"
    else:
        text = (
            f"Nothing to mitigate: no rate of the lr grid became unstable (best rate {lr_summary['best_lr']:.3g}). "
            "Extend the grid upwards to find where training fails, then tune again."
        )
        next_command = lr_summary.get("next_command")
    summary = {
        "command": COMMAND,
        "config": ctx.config.source,
        "before": None,
        "after": None,
        "chosen": None,
        "verdict": text,
        "warnings": [],
        "next_command": next_command,
    }
    store.write_summary(summary)
    print_verdict(ctx.console, text, [], next_command, str(store.folder))
    return summary


def _report(ctx: Context, summary: dict[str, Any], folder: str) -> None:
    from rich.table import Table

    table = Table(title="the stability frontier: each mitigation on the confirm grid", title_justify="left")
    for name in ("mitigation", "best lr", "best objective", "unstable at", "clipped at best", "note"):
        table.add_column(name, justify="left" if name in ("mitigation", "note") else "right")
    for m in summary["mitigations"]:

        def fmt(value: Any, spec: str = ".3g") -> str:
            return "–" if value is None else format(value, spec)

        note = "chosen" if m["mitigation"] == summary["chosen"] else ("clips most steps" if m["aggressive"] else "")
        table.add_row(
            m["mitigation"],
            fmt(m["best_lr"]),
            fmt(m["best_objective"], ".4g"),
            fmt(m["unstable_base_lr"]),
            fmt(m["clipped_fraction_at_best"], ".0%"),
            note,
        )
    ctx.console.print(table)
    ctx.verdict(summary, folder)
