"""The Python API: one call per command, for a notebook or a training script (docs/contract.md, "Python API").

Each call takes the same config the CLI does (a YAML path, a mapping, or a
:class:`~stabsweep.config.schema.Config`) and a workload ``factory``: a callable
``build(seed, **args) -> stabsweep.Workload`` (defined in the notebook is fine), or
``"file.py:build"`` / ``"module:build"`` as in the config. Config keys are keywords:
``train__steps=200`` (``__`` for a dot) or ``train={"steps": 200}`` (merged key by key).
Each returns a result object (``api/results.py``): the findings as attributes, the tables
as DataFrames, ``plot()`` for the figures.

The options every training call shares mirror the CLI's (``stabsweep lr --help``):
``out`` (run folder; default ``runs/<config name>``), ``seeds``, ``device``, ``engine``,
``executor``, ``workers``, ``ray_address``, ``resume``, ``force``, ``quiet`` (print nothing;
default False: the tables and the verdict, as the CLI prints them), ``log_to``
("tensorboard", "mlflow" or both: export the run as the command ends).

Errors: :class:`~stabsweep.errors.UserError` for bad input, with the CLI's one-line message
(``.message``); :class:`~stabsweep.errors.RunFailed` when nothing trained or a ``baseline``
gate failed (``.summary``, and ``.result``: the result object); never ``SystemExit``. A
factory that no import path reaches (defined in ``__main__`` or inside a function) runs with
``executor="local"`` only: the process and Ray executors import it by name in each worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stabsweep.api import commands
from stabsweep.api.results import (
    ClipResult,
    CurvatureResult,
    DoctorResult,
    FindResult,
    LrResult,
    Result,
    Run,
    TuneResult,
    WarmupResult,
    open_run,
)

PathLike = str | os.PathLike[str]
Factory = Callable[..., Any] | str | None

__all__ = [
    "ClipResult",
    "CurvatureResult",
    "DoctorResult",
    "FindResult",
    "LrResult",
    "Result",
    "Run",
    "TuneResult",
    "WarmupResult",
    "clip_report",
    "curvature",
    "doctor",
    "export",
    "find",
    "lr",
    "open_run",
    "report",
    "spikes",
    "tune",
    "warmup",
]


def lr(
    config: Any,
    *,
    factory: Factory = None,
    early_check: bool = False,
    out: PathLike | None = None,
    seeds: int | None = None,
    device: str | None = None,
    engine: str | None = None,
    executor: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    log_to: str | Sequence[str] | None = None,
    baseline: PathLike | None = None,
    baseline_any: bool = False,
    junit: PathLike | None = None,
    markdown: PathLike | None = None,
    **overrides: Any,
) -> LrResult:
    """The learning-rate sweep (``stabsweep lr``; docs/contract.md, "lr"): lr* and the unstable base rate.

    ``early_check``: also train ~500 steps at 2 × lr*, evaluated every step. ``baseline``:
    a summary.json or run folder to gate against (RunFailed when this run is less stable).
    Returns an :class:`LrResult` (``best_lr``, ``unstable_base_lr``, ``p_unstable``, ``rates``,
    ``trials``/``steps``/``evals``, ``plot()``).
    """
    request = commands.request(
        "lr",
        config,
        factory,
        **_common(locals()),
        baseline=baseline,
        baseline_any=baseline_any,
        junit=junit,
        markdown=markdown,
    )
    return commands.run("lr", request, early_check=early_check)


def find(
    config: Any,
    *,
    factory: Factory = None,
    out: PathLike | None = None,
    seeds: int | None = None,
    device: str | None = None,
    engine: str | None = None,
    executor: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    log_to: str | Sequence[str] | None = None,
    baseline: PathLike | None = None,
    baseline_any: bool = False,
    junit: PathLike | None = None,
    markdown: PathLike | None = None,
    **overrides: Any,
) -> FindResult:
    """The range test (``stabsweep find``; docs/contract.md, "find"): one short run with a
    growing rate. Returns a :class:`FindResult` (``suggested_lr``, ``divergence_lr``,
    ``suggestions``, ``lr_grid``)."""
    request = commands.request(
        "find",
        config,
        factory,
        **_common(locals()),
        baseline=baseline,
        baseline_any=baseline_any,
        junit=junit,
        markdown=markdown,
    )
    return commands.run("find", request)


def doctor(
    config: Any,
    *,
    factory: Factory = None,
    lr: float | None = None,
    out: PathLike | None = None,
    device: str | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    log_to: str | Sequence[str] | None = None,
    **overrides: Any,
) -> DoctorResult:
    """The sanity checks (``stabsweep doctor``; docs/contract.md, "doctor"). ``lr``: the rate
    of the training checks (default: lr* of an lr run in ``out``, else the range test's).
    Returns a :class:`DoctorResult` (``checks``, ``failed``, ``passed``); a failed check is
    a finding, not an exception."""
    request = commands.request(
        "doctor",
        config,
        factory,
        out=out,
        seeds=None,
        device=device,
        engine=None,
        executor=None,
        workers=None,
        ray_address=None,
        resume=resume,
        force=force,
        quiet=quiet,
        log_to=log_to,
        overrides=overrides,
    )
    return commands.run("doctor", request, lr=lr)


def curvature(
    config: Any,
    *,
    factory: Factory = None,
    lr: float | None = None,
    out: PathLike | None = None,
    device: str | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    log_to: str | Sequence[str] | None = None,
    **overrides: Any,
) -> CurvatureResult:
    """The curvature probe (``stabsweep curvature``; docs/contract.md, "curvature"): the top
    Hessian eigenvalue at initialisation against the optimizer's stability threshold, and the
    rate it implies beside an lr run's edge in ``out``. ``lr``: also say where that rate sits.
    Returns a :class:`CurvatureResult` (``sharpness``, ``residual``, ``predicted_edge``,
    ``edge_ratio``)."""
    request = commands.request(
        "curvature",
        config,
        factory,
        out=out,
        seeds=None,
        device=device,
        engine=None,
        executor=None,
        workers=None,
        ray_address=None,
        resume=resume,
        force=force,
        quiet=quiet,
        log_to=log_to,
        overrides=overrides,
    )
    return commands.run("curvature", request, lr=lr)


def warmup(
    config: Any = None,
    *,
    from_run: PathLike | None = None,
    unstable_lr: float | None = None,
    multiplier: float | Sequence[float] | None = None,
    factory: Factory = None,
    out: PathLike | None = None,
    seeds: int | None = None,
    device: str | None = None,
    engine: str | None = None,
    executor: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    log_to: str | Sequence[str] | None = None,
    **overrides: Any,
) -> WarmupResult:
    """The warmup sweep (``stabsweep warmup``; docs/contract.md, "warmup"): the shortest linear
    warmup that lets ``multiplier`` × the unstable rate train. Give exactly one of
    ``from_run`` (an lr run folder, or an :class:`LrResult`) or ``unstable_lr`` (with a
    config). Returns a :class:`WarmupResult` (``warmup_steps``, ``base_lr``)."""
    if isinstance(from_run, Result):
        from_run = from_run.folder.parent
    request = commands.request("warmup", config, factory, **_common(locals()))
    multipliers = [multiplier] if isinstance(multiplier, (int, float)) else multiplier
    return commands.run("warmup", request, from_run=from_run, unstable_lr=unstable_lr, multiplier=multipliers)


def clip_report(
    source: Any,
    *,
    trial: int | None = None,
    lr: float | None = None,
    percentile: float | None = None,
    sweep: bool = False,
    factory: Factory = None,
    out: PathLike | None = None,
    seeds: int | None = None,
    device: str | None = None,
    engine: str | None = None,
    executor: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    log_to: str | Sequence[str] | None = None,
    **overrides: Any,
) -> ClipResult:
    """The gradient-norm report (``stabsweep clip-report``; docs/contract.md, "clip-report").
    ``source``: an lr run folder (or :class:`LrResult`; its logged norms are read), or a
    config (one unclipped trial trains at ``lr``). ``sweep``: train with each
    ``clip_sweep.percentiles`` threshold at the unstable rate. Returns a :class:`ClipResult`
    (``threshold``, ``percentile``, ``clipped_fraction``, ``recommended_threshold``)."""
    if isinstance(source, Result):
        source = source.folder.parent
    request = commands.request("clip", source, factory, **_common(locals()))
    return commands.run("clip", request, trial=trial, lr=lr, percentile=percentile, sweep=sweep)


def tune(
    config: Any,
    *,
    factory: Factory = None,
    multiplier: float | None = None,
    out: PathLike | None = None,
    seeds: int | None = None,
    device: str | None = None,
    engine: str | None = None,
    executor: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    log_to: str | Sequence[str] | None = None,
    baseline: PathLike | None = None,
    baseline_any: bool = False,
    junit: PathLike | None = None,
    markdown: PathLike | None = None,
    **overrides: Any,
) -> TuneResult:
    """The whole procedure (``stabsweep tune``; docs/contract.md, "tune"): lr → warmup → clip →
    confirm sweeps with each fix. ``multiplier``: extend the confirm grid to at least this ×
    the unstable rate. Returns a :class:`TuneResult` (``chosen``, ``best_lr``,
    ``recommended_config``, ``stages``, ``plot()`` for the stability frontier)."""
    request = commands.request(
        "tune",
        config,
        factory,
        **_common(locals()),
        baseline=baseline,
        baseline_any=baseline_any,
        junit=junit,
        markdown=markdown,
    )
    return commands.run("tune", request, multiplier=multiplier)


def spikes(
    run: PathLike | Result, *, sigma: float | None = None, window: int | None = None, quiet: bool = False
) -> Result:
    """The loss spikes of a finished run (``stabsweep spikes``; docs/contract.md, "Spikes"):
    detected and attributed again (``sigma``, ``window``: default the run's ``detect``), written
    to spikes.csv; the command folder's result, whose ``spikes`` DataFrame holds them."""
    from stabsweep.api.results import read_command
    from stabsweep.procedures import spikes as procedure

    folder = run.folder if isinstance(run, Result) else Path(run)
    found = procedure.run(folder, sigma=sigma, window=window, quiet=quiet)
    return read_command(Path(found["folder"]))


def report(run: PathLike, output: PathLike | None = None) -> Path:
    """The self-contained HTML page of a run folder (``stabsweep report``); its path.
    Raises UserError when ``run`` holds no stage."""
    from stabsweep.procedures import report as procedure

    return Path(procedure.run(Path(run), Path(output) if output is not None else None)["report"])


def export(run: PathLike | Result, to: str, output: PathLike | None = None) -> dict[str, Any]:
    """Replay a finished run (a run folder, one command's folder, or a result) into a tracker
    (``stabsweep export``; docs/contract.md, "Export"): ``to`` is "tensorboard" (event files
    under ``output``, default RUN/tensorboard) or "mlflow" (``MLFLOW_TRACKING_URI``, else a
    local store RUN/mlflow.db). Returns what was written: ``{"tracker", "where", "stages",
    "trials", "message"}``. Raises UserError for a missing extra or a folder with no stage."""
    from stabsweep.api.tracking import export_run

    folder = run.folder if isinstance(run, Result) else Path(run)
    return export_run(folder, to, output=Path(output) if output is not None else None)


def _common(values: dict[str, Any]) -> dict[str, Any]:
    """The options every training call passes on to the request, picked from its locals."""
    names = ("out", "seeds", "device", "engine", "executor", "workers", "ray_address", "resume", "force", "quiet")
    return {
        **{name: values.get(name) for name in names},
        "log_to": values.get("log_to"),
        "overrides": values["overrides"],
    }
