"""``stabsweep clip-report``: a clipping threshold from the logged unclipped gradient norms.

The norms come from an lr run (``--trial``, else every seed's trial at the unstable base
rate, else at lr*), or from fresh unclipped trials of a config at ``--lr``. With ``--sweep``
the threshold candidates (the config's ``clip_sweep.percentiles`` of those norms) are each
trained at the unstable rate next to an unclipped baseline, every seed of ``clip_sweep.seeds``,
to see which of them make the rate train stably without clipping most steps.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

import numpy as np

from stabsweep.analysis.clip import (
    AGGRESSIVE,
    NormReport,
    dominant_layers,
    norm_report,
    recommended,
    spans_orders_of_magnitude,
)
from stabsweep.analysis.clip import sweep_rows as settings_of
from stabsweep.analysis.clip import verdict as clip_verdict
from stabsweep.config.schema import ClipConfig, Config
from stabsweep.errors import UserError
from stabsweep.procedures.context import Context, full_run, seeds_of
from stabsweep.records import TrialSpec, TrialStatus
from stabsweep.report import plots
from stabsweep.report.console import trials_table
from stabsweep.results.runs import LrRun

COMMAND = "clip"
FEW_STEPS = 0.2  # an unstable trial that ran less than this share of the run logged too few norms ...
MIN_NORMS = 20  # ... or fewer norms than this


@dataclass(frozen=True)
class NormSource:
    kind: str  # "run" or "config"
    path: str
    trial_ids: list[int]
    lr: float
    steps: np.ndarray  # the step of each norm, trial after trial
    norms: np.ndarray
    note: str | None = None  # why these trials and not the default ones

    @property
    def name(self) -> str:
        trials = f"trial {self.trial_ids[0]}" if len(self.trial_ids) == 1 else f"trials {self.trial_ids}"
        return f"{trials} (lr={self.lr:.3g}) of {self.path}"


def trials_from_run(lr_run: LrRun, trial_id: int | None) -> tuple[list[int], float, str | None]:
    """The trials to read: the one asked for, else every seed's at the unstable base rate, else at lr*;
    and a note when the default moved.

    A trial that diverged within its first ``FEW_STEPS`` fraction of the run (and at least
    ``MIN_NORMS`` steps) logged a handful of norms, most of them the explosion itself: no
    percentile of those says how large gradients are in training. Then the highest feasible rate
    below it is read instead, the closest rate that trained the whole run."""
    trials = lr_run.trials()
    if trial_id is not None:
        row = trials[trials["trial_id"] == trial_id]
        if row.empty:
            known = ", ".join(map(str, trials["trial_id"]))
            raise UserError(f"--trial {trial_id}: no such trial in {lr_run.folder / 'trials.csv'} (trials: {known})")
        return [int(trial_id)], float(row.iloc[0]["lr"]), None
    sweep = trials[trials.get("phase", "sweep") == "sweep"]
    picked = lr_run.summary.get("unstable_trial_id")
    if picked is None:
        picked = lr_run.summary.get("best_trial_id")
    if picked is None:
        raise UserError(f"{lr_run.folder}: the run has neither an unstable nor a best trial; pick one with --trial")
    lr = float(trials.loc[trials["trial_id"] == picked, "lr"].iloc[0])
    note = None
    ran = sweep.loc[sweep["lr"] == lr, "steps_run"].max()
    enough = max(MIN_NORMS, FEW_STEPS * sweep["steps_run"].max())
    feasible = sweep[(sweep["lr"] < lr) & sweep["status"].map(lambda s: TrialStatus.of(s).feasible)]
    if ran < enough and len(feasible):
        below = float(feasible["lr"].max())
        note = (
            f"the unstable rate {lr:.3g} ran only {int(ran)} steps before it diverged, too few norms to read; "
            f"read the highest feasible rate below it, {below:.3g}, instead"
        )
        lr = below
    same = sweep[sweep["lr"] == lr]
    return [int(t) for t in same["trial_id"]], lr, note


def norms_of(steps: Any, trial_ids: list[int], where: str) -> tuple[np.ndarray, np.ndarray]:
    part = steps[steps["trial_id"].isin(trial_ids)]
    if part.empty:
        raise UserError(f"{where}: trial {trial_ids[0]} logged no steps (it failed before its first step)")
    return part["step"].to_numpy(), part["grad_norm"].to_numpy(dtype=float)


def plan(config: Config, lr: float, thresholds: dict[float, float]) -> list[TrialSpec]:
    """Unclipped baselines first (one per seed), then each candidate threshold per seed, all at ``lr``."""
    settings = [(None, None), *sorted(thresholds.items())]
    seeds = seeds_of(config, config.clip_sweep.seeds)
    return [
        full_run(
            config,
            s * len(seeds) + k,
            lr,
            seed,
            {
                "phase": "baseline" if threshold is None else "clip",
                "clip_percentile": percentile,
                "clip_threshold": threshold,
            },
            clip=None if threshold is None else ClipConfig(threshold=threshold),
        )
        for s, (percentile, threshold) in enumerate(settings)
        for k, seed in enumerate(seeds)
    ]


def run(
    ctx: Context, lr_run: LrRun | None, *, trial_id: int | None, lr: float | None, percentile: float | None, sweep: bool
) -> dict[str, Any]:
    config = ctx.config
    percentile = percentile if percentile is not None else config.clip_sweep.percentile
    store = ctx.store(COMMAND)
    job = None
    if lr_run is not None:
        if lr is not None and not sweep:
            raise UserError("--lr with a run folder only sets the rate of --sweep; add --sweep, or give a CONFIG")
        read_ids, read_lr, moved = trials_from_run(lr_run, trial_id)
        steps, norms = norms_of(lr_run.steps(), read_ids, str(lr_run.folder / "steps.csv"))
        source = NormSource("run", str(lr_run.folder), read_ids, read_lr, steps, norms, moved)
    else:
        if lr is None:
            raise UserError("clip-report CONFIG needs --lr X: the rate at which to train and record the norms")
        job = ctx.job()
        record = plan(config, lr, {})  # the baselines of a sweep at lr, too
        ctx.run_trials(record, job, store, f"recording gradient norms at lr={lr:g}")
        trials, all_steps, _ = store.finalize()
        ctx.stop_if_nothing_trained(store, trials, COMMAND)
        ids = [spec.trial_id for spec in record]
        steps, norms = norms_of(all_steps, ids, str(store.folder / "steps.csv"))
        source = NormSource("config", config.source, ids, lr, steps, norms)

    if not np.isfinite(source.norms).any():
        raise UserError(f"{source.name}: every logged gradient norm is non-finite; pick another trial with --trial")
    sweep_config = config.clip_sweep
    report = norm_report(source.norms, percentile, sweep_config.aggressive_fraction, config.detect.early_fraction)
    rows = None
    if sweep:
        sweep_lr = lr or (lr_run.summary.get("unstable_base_lr") if lr_run else None) or source.lr
        finite = source.norms[np.isfinite(source.norms)]
        candidates = {p: float(np.percentile(finite, p)) for p in sweep_config.percentiles}
        job = job or ctx.job()
        specs = plan(config, sweep_lr, candidates)
        ctx.run_trials(specs, job, store, f"clip sweep at lr={sweep_lr:g}")
        trials, all_steps, _ = store.finalize()
        ctx.stop_if_nothing_trained(store, trials, COMMAND)
        rows = settings_of(trials, sweep_config.aggressive_fraction)
        _plot_sweep(ctx, store.folder, trials, all_steps)

    summary = _summary(ctx, source, report, rows)
    if rows is not None:
        ctx.add_spikes(summary, ctx.spikes(store, trials, all_steps), trials)
        ctx.sharpness(store, trials, summary, COMMAND)
    layers = _layers_of(lr_run, source) if lr_run is not None else None
    if layers is not None and len(layers):
        norms = lr_run.steps()
        summary["dominant_layers"] = dominant_layers(
            layers, norms[norms["trial_id"].isin(source.trial_ids)], report.threshold
        )
        if summary["dominant_layers"]:
            top = summary["dominant_layers"][0]
            summary["verdict"] += (
                f" At the logged steps above the threshold, '{top['layer']}' carries {top['share']:.0%} of the "
                "squared gradient norm: the layer to look at."
            )
        ctx.plot(
            plots.layer_spikes,
            layers,
            source.steps,
            source.norms,
            report.threshold,
            store.folder / "plots" / "layer_spikes.png",
            title=ctx.title(COMMAND, "per-layer gradient norms around the largest spikes"),
        )
    _plot(ctx, store.folder, source, report)
    summary["warnings"] += ctx.plot_warnings
    store.write_summary(summary)
    _report(ctx, source, report, summary, str(store.folder))
    return summary


def _layers_of(lr_run: LrRun, source: NormSource) -> Any:
    """The run's layers.csv rows of the trials read (train.log_layers), or None."""
    from stabsweep.results.store import read_table

    path = lr_run.folder / "layers.csv"
    if not path.is_file():
        return None
    layers = read_table(path)
    return layers[layers["trial_id"].isin(source.trial_ids)]


def _summary(ctx: Context, source: NormSource, report: NormReport, rows: list[dict[str, Any]] | None) -> dict[str, Any]:
    config_ref = shlex.quote(ctx.config.source)
    pick = recommended(rows) if rows is not None else None
    threshold = pick["clip_threshold"] if pick else report.threshold
    lower = pick is None if rows is not None else report.aggressive  # clipping does not help: a lower grid
    if lower:
        next_command = f"stabsweep lr {config_ref} --set lr_sweep.lrs.max={source.lr / 3:.3g}  # a lower grid"
    else:  # a new run folder: never overwrite the lr run this report came from
        clipped_out = shlex.quote(f"{ctx.run_root}-clip{threshold:.3g}")
        next_command = f"stabsweep lr {config_ref} --set train.clip={threshold:.4g} --out {clipped_out}"
    warnings = [source.note] if source.note else []
    if report.non_finite_dropped:
        warnings.append(f"{report.non_finite_dropped} non-finite norms (the trial diverging) were left out")
    if report.steps_read < 100:
        warnings.append(f"only {report.steps_read} steps read: percentiles of so few norms are rough")
    aggressive_fraction = ctx.config.clip_sweep.aggressive_fraction
    return {
        "command": COMMAND,
        "config": ctx.config.source,
        **report.as_dict(),
        "recommended_threshold": pick["clip_threshold"] if pick else (None if rows is not None else report.threshold),
        "recommended_percentile": pick["clip_percentile"] if pick else None,
        "source": {
            "kind": source.kind,
            "path": source.path,
            "trial_ids": source.trial_ids,
            "lr": source.lr,
            "steps_read": report.steps_read,
        },
        "sweep": rows,
        "verdict": clip_verdict(source.name, report, rows),
        "warnings": warnings,
        "rules": {
            "threshold": f"p{report.percentile:g} of the unclipped gradient norms",
            "clip": "g ← λ·g/‖g‖ when ‖g‖ > λ (torch.nn.utils.clip_grads_with_norm_)",
            "clipped_fraction": "share of the logged unclipped steps above the threshold",
            "aggressive": f"the threshold is below more than {aggressive_fraction:.0%} of the norms of the first "
            f"{ctx.config.detect.early_fraction:.0%} of steps",
            "sweep_aggressive": f"a clipped trial that clipped more than {aggressive_fraction:.0%} of its own steps: "
            f"{AGGRESSIVE}; never recommended",
            "rescued": "the unclipped baseline diverged or was unstable, and every seed with the threshold is ok",
            "recommended": "the rescued threshold with the highest value: the least intrusive",
        },
        "next_command": next_command,
    }


def _plot(ctx: Context, folder: Any, source: NormSource, report: NormReport) -> None:
    out = folder / "plots"
    log = spans_orders_of_magnitude(source.norms)
    title = ctx.title(COMMAND, f"unclipped gradient norms, {source.name.split(' of ')[0]}")
    finite = np.isfinite(source.norms)
    ctx.plot(
        plots.grad_norm_report,
        source.steps[finite],
        source.norms[finite],
        report.threshold,
        out / "grad_norm.png",
        log=log,
        title=title,
    )
    ctx.plot(plots.grad_norm_histogram, source.norms, report.threshold, out / "grad_norm_hist.png", title=title)


def _plot_sweep(ctx: Context, folder: Any, trials: Any, steps: Any) -> None:
    first_seed = trials[trials["seed"] == trials["seed"].min()]
    labelled = first_seed.assign(clip=first_seed["clip_threshold"].fillna(float("inf")))
    ctx.plot(
        plots.step_curves,
        steps[steps["trial_id"].isin(first_seed["trial_id"])],
        labelled,
        "train_loss",
        folder / "plots" / "clip_curves.png",
        label="clip",
        smooth=20,
        baseline="unclipped",
        title=ctx.title(COMMAND, "training loss per clipping threshold"),
    )


def _report(ctx: Context, source: NormSource, report: NormReport, summary: dict[str, Any], folder: str) -> None:
    from rich.table import Table

    title = f"gradient norms before clipping: {source.name}: {len(source.norms)} steps"
    table = Table(title=title, title_justify="left")
    for name in [*report.percentiles, "threshold", "clipped (all / first steps)"]:
        table.add_column(name, justify="right")
    cells = [f"{v:.4g}" for v in report.percentiles.values()]
    clipped = f"{report.clipped_fraction:.1%} / {report.early_clipped_fraction:.0%}"
    table.add_row(*cells, f"{report.threshold:.4g}", clipped)
    ctx.console.print(table)
    if summary["sweep"] is not None:
        import pandas as pd

        frame = pd.DataFrame(summary["sweep"])
        pick = summary["recommended_percentile"]
        marks = {}
        for row in summary["sweep"]:
            if row["aggressive"]:
                marks[row["trial_id"]] = "clips most steps"
            elif row["rescued"]:
                marks[row["trial_id"]] = "rescued" + (" (recommended)" if row["clip_percentile"] == pick else "")
        columns = ["clip_percentile", "clip_threshold", "status", "clipped_fraction", "best_eval_loss", "reason"]
        ctx.console.print(trials_table(frame, columns, "clip sweep (no percentile = unclipped baseline)", marks))
    ctx.verdict(summary, folder)
