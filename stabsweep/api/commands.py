"""Every command as a Python call: the one code path the CLI and a notebook share.

``stabsweep.lr(config, factory=build, ...)`` and ``stabsweep lr CONFIG`` both come here: a
:class:`Request` (the config, its overrides, where to write, how to run) and :func:`run`,
which builds the procedure's context, runs it, keeps its figures and hands back a result
object (``api/results.py``). The CLI only parses options into a request and turns the
outcome into output and an exit code (``cli/options.py``).

Errors are the CLI's: bad input raises :class:`~stabsweep.errors.UserError` with the message
the CLI prints (exit 2 there); a run whose result the user must act on (nothing trained, a
failed gate) raises :class:`~stabsweep.errors.RunFailed` with ``.summary`` and ``.result``
(exit 3 there); anything else is a bug of stabsweep's and propagates with its traceback.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stabsweep.config.names import SEEDS_KEYS
from stabsweep.errors import RunFailed, UserError

if TYPE_CHECKING:
    from stabsweep.api.results import Result
    from stabsweep.config.loader import Overrides
    from stabsweep.config.schema import Config
    from stabsweep.procedures.ci import CiRequest
    from stabsweep.procedures.context import Context

TRACKERS = ("tensorboard", "mlflow")
STAGES_WRITTEN = {  # the folders a command may write: what --log-to exports when it ends
    "lr": ("find", "lr"),
    "tune": ("find", "lr", "warmup", "clip", "tune"),
}


@dataclass
class Request:
    """One command's input, however it was given (CLI options or keyword arguments)."""

    config: Any = None  # a YAML path, a mapping, or a Config; None: the one an earlier run saved
    factory: Any = None  # a callable build(seed, **args), or "file.py:fn" / "module:fn"
    overrides: Overrides | None = None  # config key -> value, each naming where it was set
    out: Path | None = None
    resume: bool = False
    force: bool = False
    quiet: bool = False
    ci: CiRequest | None = None
    log_to: tuple[str, ...] = ()
    keep_figures: bool = True  # the API hands figures back; the CLI only writes them
    ctx: Context | None = field(default=None, repr=False)  # set once the config is read (the CLI's Ctrl-C message)
    folder: Path | None = field(default=None, repr=False)  # the command's results folder, once known


def run(command: str, request: Request, **args: Any) -> Result:
    """Run ``command`` ("lr", "find", "doctor", "warmup", "clip", "tune") on ``request``; its
    result object. Raises UserError (bad input) or RunFailed (exit 3's outcomes)."""
    from stabsweep.api.results import result_of
    from stabsweep.report.plots import keep_figures
    from stabsweep.results.lock import release_all

    for tracker in request.log_to:
        if tracker not in TRACKERS:
            raise UserError(f"--log-to {tracker}: expected one of {', '.join(TRACKERS)}")
        _require_tracker(tracker)
    started = time.time()
    with keep_figures() as figures:
        try:
            summary = _COMMANDS[command](request, **args)
        except RunFailed as exc:
            exc.result = result_of(request.folder, exc.summary, figures) if request.folder else None
            _log_to(request, command, started)
            raise
        finally:
            release_all()
    result = result_of(request.folder, summary, figures if request.keep_figures else {})
    _log_to(request, command, started)
    return result


def request(
    command: str,
    config: Any,
    factory: Any,
    *,
    out: str | os.PathLike[str] | None,
    seeds: int | None,
    device: str | None,
    engine: str | None,
    executor: str | None,
    workers: int | None,
    ray_address: str | None,
    resume: bool,
    force: bool,
    quiet: bool,
    log_to: str | Sequence[str] | None,
    overrides: Mapping[str, Any],
    baseline: str | os.PathLike[str] | None = None,
    baseline_any: bool = False,
    junit: str | os.PathLike[str] | None = None,
    markdown: str | os.PathLike[str] | None = None,
) -> Request:
    """A request from the Python API's keyword arguments (the CLI builds its own from options).
    ``overrides``: config keys as keywords, ``train__steps=200`` (``__`` for a dot) or a
    section's mapping ``train={"steps": 200}`` (merged key by key)."""
    from stabsweep.config.loader import Overrides
    from stabsweep.procedures.ci import CiRequest

    keys = Overrides()
    for name, value in overrides.items():
        for key, leaf in _flatten(name.replace("__", "."), value):
            keys[key] = leaf
            keys.origins[key] = f"{name}="
    flags = {  # config key -> (the keyword that sets it, its value)
        **{key: ("seeds", seeds) for key in SEEDS_KEYS.get(command, ())},
        "device": ("device", device),
        "execution.engine": ("engine", engine),
        "execution.executor": ("executor", executor),
        "execution.workers": ("workers", workers),
        "execution.ray.address": ("ray_address", ray_address),
    }
    for key, (name, value) in flags.items():
        if value is not None:
            keys[key] = value
            keys.origins[key] = f"{name}="
    trackers = (log_to,) if isinstance(log_to, str) else tuple(log_to or ())
    return Request(
        config=config,
        factory=factory,
        overrides=keys,
        out=Path(out) if out is not None else None,
        resume=resume,
        force=force,
        quiet=quiet,
        ci=CiRequest(
            Path(baseline) if baseline is not None else None,
            baseline_any,
            Path(junit) if junit is not None else None,
            Path(markdown) if markdown is not None else None,
        ),
        log_to=trackers,
    )


def _flatten(key: str, value: Any) -> list[tuple[str, Any]]:
    """``("train", {"steps": 2, "clip": {"threshold": 1}})`` → ``[("train.steps", 2), ("train.clip.threshold", 1)]``."""
    if isinstance(value, Mapping) and value:
        return [pair for sub, inner in value.items() for pair in _flatten(f"{key}.{sub}", inner)]
    return [(key, value)]


def load(request: Request, saved_path: Path | None = None, *, saved: bool = False) -> Config:
    """The request's config: read (a path), copied (a mapping or a Config), with its factory
    and overrides applied, validated. ``saved_path``: a config an earlier run saved, used when
    the request gives none."""
    from stabsweep.config.loader import config_from, read_yaml
    from stabsweep.config.schema import Config

    given, fn = request.config if request.config is not None else saved_path, None
    if given is None:
        raise UserError("a config is needed: a YAML path, a mapping or a stabsweep Config")
    if isinstance(given, Config):
        data, source, fn = given.model_dump(mode="json", exclude_none=False), given.source, given.factory_fn
    elif isinstance(given, Mapping):
        data, source = copy.deepcopy(dict(given)), "config"
    elif isinstance(given, (str, os.PathLike)):
        path = Path(given)
        if not path.is_file():
            raise UserError(f"{path}: config file not found")
        data, source = read_yaml(path), str(path)
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping of keys (name, workload, train, ...) at the top")
    else:
        raise UserError(f"config: expected a YAML path, a mapping or a stabsweep Config, got {type(given).__name__}")
    if request.factory is not None:
        fn = _set_factory(data, request.factory)
    config = config_from(data, source, request.overrides, saved=saved)
    config._factory_fn = fn
    return config


def _set_factory(data: dict[str, Any], factory: Any) -> Callable[..., Any] | None:
    """Point the config's workload at ``factory``; the callable itself when no worker could
    import it by name (then it runs in this process only)."""
    from stabsweep.workloads.factory import name_of_callable

    workload = data.get("workload")
    workload = dict(workload) if isinstance(workload, Mapping) else {}
    workload.pop("name", None)
    data["workload"] = workload
    if isinstance(factory, str):
        workload["factory"] = factory
        return None
    if not callable(factory):
        raise UserError(
            f"factory: expected a function build(seed, **args) returning a stabsweep.Workload, or 'file.py:function', "
            f"got {type(factory).__name__}"
        )
    workload["factory"], importable = name_of_callable(factory)
    return None if importable else factory


def context(request: Request, command: str, config: Config, default_out: Path | None = None) -> Context:
    """The procedure's context for ``config``: where it writes, and a console that is quiet when asked."""
    from stabsweep.procedures.context import Context, RunOptions
    from stabsweep.report.console import make_console

    options = RunOptions(
        out=request.out or default_out, resume=request.resume, force=request.force, quiet=request.quiet
    )
    ctx = Context(config, options, make_console(quiet=request.quiet))
    request.ctx, request.folder = ctx, ctx.run_root / command
    if not Path(config.source).is_file():  # a mapping: the next commands name the copy the run saves
        config._source = str(request.folder / "config.yaml")
    return ctx


def _gated(request: Request, command: str, procedure: Callable[[Context], dict[str, Any]]) -> dict[str, Any]:
    from stabsweep.procedures.ci import CiRequest, run_gated

    ctx = context(request, command, load(request))
    return run_gated(ctx, command, lambda: procedure(ctx), request.ci or CiRequest())


def _lr(request: Request, early_check: bool = False) -> dict[str, Any]:
    from stabsweep.procedures import lr

    return _gated(request, "lr", lambda ctx: lr.run(ctx, early_check=early_check))


def _find(request: Request) -> dict[str, Any]:
    from stabsweep.procedures import find

    return _gated(request, "find", find.run)


def _tune(request: Request, multiplier: float | None = None) -> dict[str, Any]:
    from stabsweep.procedures import tune

    if multiplier is not None and not 1.0 <= multiplier <= 1e6:
        raise UserError(f"--multiplier {multiplier:g}: expected a number from 1 to 1e6")
    return _gated(request, "tune", lambda ctx: tune.run(ctx, multiplier=multiplier))


def _doctor(request: Request, lr: float | None = None) -> dict[str, Any]:
    from stabsweep.procedures import doctor

    return doctor.run(context(request, "doctor", load(request)), lr=lr)


def _curvature(request: Request, lr: float | None = None) -> dict[str, Any]:
    from stabsweep.procedures import curvature

    return curvature.run(context(request, "curvature", load(request)), lr=lr)


def _warmup(
    request: Request,
    from_run: Path | None = None,
    unstable_lr: float | None = None,
    multiplier: Sequence[float] | None = None,
) -> dict[str, Any]:
    from stabsweep.procedures import warmup
    from stabsweep.results.runs import read_lr_run

    if (from_run is None) == (unstable_lr is None):
        raise UserError("give exactly one of --from RUN (an lr run) or --unstable-lr X")
    lr_run = read_lr_run(Path(from_run)) if from_run is not None else None
    if lr_run is not None:
        rate = lr_run.summary.get("unstable_base_lr")
        if rate is None:
            raise UserError(
                f"{lr_run.folder / 'summary.json'}: the lr sweep found no unstable rate, so there is nothing "
                f"to warm up past; extend the lr grid upwards: {lr_run.summary.get('next_command')}"
            )
    else:
        if request.config is None:
            raise UserError("--unstable-lr needs a CONFIG to know what to train")
        if unstable_lr <= 0:
            raise UserError(f"--unstable-lr {unstable_lr:g}: expected a positive learning rate")
        rate = unstable_lr
    if multiplier:
        request.overrides = _with(request.overrides, "warmup_sweep.multipliers", [float(m) for m in multiplier])
    config = load(request, lr_run.config_path if lr_run else None)
    ctx = context(request, "warmup", config, lr_run.root if lr_run else None)
    return warmup.run(ctx, float(rate), lr_run)


def _clip(
    request: Request,
    trial: int | None = None,
    lr: float | None = None,
    percentile: float | None = None,
    sweep: bool = False,
) -> dict[str, Any]:
    from stabsweep.procedures import clip
    from stabsweep.results.runs import read_lr_run

    if lr is not None and lr <= 0:
        raise UserError(f"--lr {lr:g}: expected a positive learning rate")
    if percentile is not None and not 0 <= percentile <= 100:
        raise UserError(f"--percentile {percentile:g}: expected a number from 0 to 100")
    source = request.config
    lr_run = None
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        lr_run = read_lr_run(Path(source))
        request.config = None
        config = load(request, lr_run.config_path, saved=not sweep)  # reading a run: no torch
        ctx = context(request, "clip", config, lr_run.root)
    elif isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
        raise UserError(f"{source}: neither a run folder nor a config file")
    else:
        ctx = context(request, "clip", load(request))
    return clip.run(ctx, lr_run, trial_id=trial, lr=lr, percentile=percentile, sweep=sweep)


def _with(overrides: Overrides | None, key: str, value: Any) -> Overrides:
    from stabsweep.config.loader import Overrides

    out = Overrides()
    if overrides is not None:
        out.update(overrides)
        out.origins.update(overrides.origins)
    out[key] = value
    out.origins[key] = "--multiplier"
    return out


_COMMANDS: dict[str, Callable[..., dict[str, Any]]] = {
    "lr": _lr,
    "find": _find,
    "tune": _tune,
    "doctor": _doctor,
    "curvature": _curvature,
    "warmup": _warmup,
    "clip": _clip,
}


def _require_tracker(tracker: str) -> None:
    from stabsweep.report.trackers import require

    require(tracker)


def _log_to(request: Request, command: str, since: float) -> None:
    """``--log-to``: export what this command wrote (the stages whose summary is new) to each tracker."""
    if not request.log_to or request.ctx is None:
        return
    from stabsweep.api.tracking import export_run

    root = request.ctx.run_root
    names = STAGES_WRITTEN.get(command, (command,))
    stages = [
        root / name
        for name in names
        if (root / name / "summary.json").is_file() and (root / name / "summary.json").stat().st_mtime >= since - 1
    ]
    for tracker in request.log_to:
        summary = export_run(root, tracker, stages=stages)
        if not request.quiet:
            request.ctx.console.print(summary["message"], markup=False)
