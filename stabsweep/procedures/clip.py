"""``stabsweep clip-report``: a clipping threshold from the logged unclipped gradient norms.

The norms come from one trial: of an lr run (``--trial``, else the trial at the unstable
base rate, else the best one), or of a fresh unclipped trial of a config at ``--lr``. With
``--sweep`` the threshold candidates (the config's ``clip_sweep.percentiles`` of those norms)
are each trained at the unstable rate next to an unclipped baseline, to see which of them
turn a diverged or unstable trial into an ok one.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

import numpy as np

from stabsweep.analysis.clip import NormReport, norm_report, spans_orders_of_magnitude, sweep_rows, verdict
from stabsweep.config.schema import ClipConfig, Config
from stabsweep.errors import UserError
from stabsweep.procedures.context import Context
from stabsweep.records import TrialSpec, TrialStatus
from stabsweep.report import plots
from stabsweep.report.console import print_verdict, trials_table
from stabsweep.results.runs import LrRun

COMMAND = "clip"


@dataclass(frozen=True)
class NormSource:
    kind: str  # "run" or "config"
    path: str
    trial_id: int
    lr: float
    steps: np.ndarray
    norms: np.ndarray

    @property
    def name(self) -> str:
        return f"trial {self.trial_id} (lr={self.lr:.3g}) of {self.path}"


def trial_from_run(lr_run: LrRun, trial_id: int | None) -> tuple[int, float]:
    """The trial to read: the one asked for, else the unstable base rate's, else the best."""
    trials = lr_run.trials()
    if trial_id is None:
        trial_id = lr_run.summary.get("unstable_trial_id")
        if trial_id is None:
            trial_id = lr_run.summary.get("best_trial_id")
        if trial_id is None:
            raise UserError(f"{lr_run.folder}: the run has neither an unstable nor a best trial; pick one with --trial")
    row = trials[trials["trial_id"] == trial_id]
    if row.empty:
        known = ", ".join(map(str, trials["trial_id"]))
        raise UserError(f"--trial {trial_id}: no such trial in {lr_run.folder / 'trials.csv'} (trials: {known})")
    return int(trial_id), float(row.iloc[0]["lr"])


def norms_of(steps: Any, trial_id: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    part = steps[steps["trial_id"] == trial_id]
    if part.empty:
        raise UserError(f"{where}: trial {trial_id} logged no steps (it failed before its first step)")
    return part["step"].to_numpy(), part["grad_norm"].to_numpy(dtype=float)


def plan(config: Config, lr: float, thresholds: dict[float, float]) -> list[TrialSpec]:
    """Trial 0 trains unclipped; then one trial per candidate threshold, all at ``lr``."""
    train = config.train
    specs = [
        TrialSpec(
            0,
            lr,
            config.seed,
            train.steps,
            train.eval_every,
            train.schedule,
            clip=None,
            columns={"phase": "baseline", "clip_percentile": None, "clip_threshold": None},
        )
    ]
    for percentile, threshold in sorted(thresholds.items()):
        specs.append(
            TrialSpec(
                len(specs),
                lr,
                config.seed,
                train.steps,
                train.eval_every,
                train.schedule,
                clip=ClipConfig(threshold=threshold),
                columns={"phase": "clip", "clip_percentile": percentile, "clip_threshold": threshold},
            )
        )
    return specs


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
        read_id, read_lr = trial_from_run(lr_run, trial_id)
        steps, norms = norms_of(lr_run.steps(), read_id, str(lr_run.folder / "steps.csv"))
        source = NormSource("run", str(lr_run.folder), read_id, read_lr, steps, norms)
    else:
        if lr is None:
            raise UserError("clip-report CONFIG needs --lr X: the rate at which to train and record the norms")
        job = ctx.job()
        record = plan(config, lr, {})
        ctx.run_trials(record, job, store, f"recording gradient norms at lr={lr:g}")
        trials, all_steps, _ = store.finalize()
        ctx.stop_if_nothing_trained(store, trials, COMMAND)
        steps, norms = norms_of(all_steps, 0, str(store.folder / "steps.csv"))
        source = NormSource("config", config.source, 0, lr, steps, norms)

    if not np.isfinite(source.norms).any():
        raise UserError(f"{source.name}: every logged gradient norm is non-finite; pick another trial with --trial")
    report = norm_report(source.norms, percentile, config.clip_sweep.aggressive_fraction)
    rows = None
    if sweep:
        sweep_lr = lr or (lr_run.summary.get("unstable_base_lr") if lr_run else None) or source.lr
        candidates = {
            p: float(np.percentile(source.norms[np.isfinite(source.norms)], p)) for p in config.clip_sweep.percentiles
        }
        job = job or ctx.job()
        specs = plan(config, sweep_lr, candidates)
        ctx.run_trials(specs, job, store, f"clip sweep at lr={sweep_lr:g}")
        trials, all_steps, _ = store.finalize()
        ctx.stop_if_nothing_trained(store, trials, COMMAND)
        rows = sweep_rows(trials)
        _plot_sweep(store.folder, trials, all_steps)

    summary = _summary(ctx, source, report, rows)
    _plot(store.folder, source, report)
    store.write_summary(summary)
    _report(ctx, source, report, summary, str(store.folder))
    return summary


def _summary(
    ctx: Context, source: NormSource, report: NormReport, sweep_rows: list[dict[str, Any]] | None
) -> dict[str, Any]:
    config_ref = shlex.quote(ctx.config.source)
    if report.aggressive:
        next_command = f"stabsweep lr {config_ref} --set lr_sweep.lrs.max={source.lr / 3:.3g}  # a lower grid"
    else:  # a new run folder: never overwrite the lr run this report came from
        clipped_out = shlex.quote(f"{ctx.run_root}-clip{report.threshold:.3g}")
        next_command = f"stabsweep lr {config_ref} --set train.clip={report.threshold:.4g} --out {clipped_out}"
    warnings = []
    if report.non_finite_dropped:
        warnings.append(f"{report.non_finite_dropped} non-finite norms (the trial diverging) were left out")
    if report.steps_read < 100:
        warnings.append(f"only {report.steps_read} steps read: percentiles of so few norms are rough")
    return {
        "command": COMMAND,
        "config": ctx.config.source,
        **report.as_dict(),
        "source": {
            "kind": source.kind,
            "path": source.path,
            "trial_id": source.trial_id,
            "lr": source.lr,
            "steps_read": report.steps_read,
        },
        "sweep": sweep_rows,
        "verdict": verdict(source.name, report, sweep_rows),
        "warnings": warnings,
        "rules": {
            "threshold": f"p{report.percentile:g} of the unclipped gradient norms",
            "clip": "g ← λ·g/‖g‖ when ‖g‖ > λ (torch.nn.utils.clip_grads_with_norm_)",
            "aggressive": f"more than {ctx.config.clip_sweep.aggressive_fraction:.0%} of steps clipped",
        },
        "next_command": next_command,
    }


def _plot(folder: Any, source: NormSource, report: NormReport) -> None:
    out = folder / "plots"
    log = spans_orders_of_magnitude(source.norms)
    title = f"gradient norms of trial {source.trial_id} (lr={source.lr:.3g})"
    finite = np.isfinite(source.norms)
    plots.grad_norm_report(
        source.steps[finite], source.norms[finite], report.threshold, out / "grad_norm.png", log=log, title=title
    )
    plots.grad_norm_histogram(source.norms, report.threshold, out / "grad_norm_hist.png", title=title)


def _plot_sweep(folder: Any, trials: Any, steps: Any) -> None:
    labelled = trials.assign(clip=trials["clip_threshold"].fillna(float("inf")))
    ok = list(trials[trials["status"] == TrialStatus.OK]["trial_id"][:3])
    plots.step_curves(
        steps,
        labelled,
        "train_loss",
        folder / "plots" / "clip_curves.png",
        label="clip",
        best_id=0,
        above_ids=ok,
        smooth=20,
        title="training loss per clipping threshold (green: none)",
    )


def _report(ctx: Context, source: NormSource, report: NormReport, summary: dict[str, Any], folder: str) -> None:
    from rich.table import Table

    table = Table(
        title=f"gradient norms before clipping: {source.name}: {len(source.norms)} steps", title_justify="left"
    )
    for name in [*report.percentiles, "threshold", "clipped"]:
        table.add_column(name, justify="right")
    cells = [f"{v:.4g}" for v in report.percentiles.values()]
    table.add_row(*cells, f"{report.threshold:.4g}", f"{report.clipped_fraction:.1%}")
    ctx.console.print(table)
    if summary["sweep"] is not None:
        import pandas as pd

        frame = pd.DataFrame(summary["sweep"])
        marks = {r["trial_id"]: "rescued" for r in summary["sweep"] if r["rescued"]}
        ctx.console.print(
            trials_table(
                frame,
                ["clip_percentile", "clip_threshold", "status", "best_eval_loss", "reason"],
                "clip sweep (no percentile = unclipped baseline)",
                marks,
            )
        )
    print_verdict(ctx.console, summary["verdict"], summary["warnings"], summary["next_command"], folder)
