"""The options every command shares, declared once, and the one place errors become exit codes.

:class:`CommonOptions` declares each shared option once, as an ``Annotated`` field; the
:func:`command` decorator adds those fields to a command's own parameters, so typer shows them
on every command and the command receives them as one ``options`` object. Adding a command is
its own options plus the decorator.

Exit codes: 0 success (instability found is still success), 1 an internal error, 2 bad input,
3 the run completed but its result is a failure the user must act on (nothing trained), 130
interrupted (finished trials are kept; rerun with --resume).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import sys
import traceback
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from stabsweep.config.names import SEEDS_KEYS, EngineName, ExecutorName
from stabsweep.errors import RunFailed, UserError


@dataclasses.dataclass
class CommonOptions:
    """What every command takes; each field is a typer option, declared here and nowhere else."""

    out: Annotated[
        Path | None,
        typer.Option("--out", help="Run folder; results go to OUT/<command>/. Default: runs/<config name>/."),
    ] = None
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override a config key, e.g. --set train.steps=200 (repeatable; values are YAML).",
        ),
    ] = None
    device: Annotated[
        str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps (default: the config's device).")
    ] = None
    resume: Annotated[bool, typer.Option("--resume", help="Keep finished trials and run only the missing ones.")] = (
        False
    )
    force: Annotated[bool, typer.Option("--force", help="Delete this command's earlier results and start over.")] = (
        False
    )
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False
    json_output: Annotated[bool, typer.Option("--json", help="Print summary.json on stdout (for CI smoke runs).")] = (
        False
    )
    engine: Annotated[
        EngineName | None,
        typer.Option(
            "--engine", help="auto: trials as one vectorized computation where the model allows (execution.engine)."
        ),
    ] = None
    executor: Annotated[
        ExecutorName | None,
        typer.Option(
            "--executor", help="local, process (a worker per core or GPU), ray or slurm (execution.executor)."
        ),
    ] = None
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="Worker processes for --executor process (execution.workers)."),
    ] = None
    seeds: Annotated[
        int | None,
        typer.Option(
            "--seeds", min=1, max=1000, help="Seeds per setting: instability as a probability (the sweep's seeds key)."
        ),
    ] = None
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address", help="Ray cluster to join, e.g. auto or ray://head:10001 (execution.ray.address)."
        ),
    ] = None
    log_to: Annotated[
        list[str] | None,
        typer.Option(
            "--log-to",
            metavar="TRACKER",
            help="tensorboard or mlflow: export the run there as the command ends (repeatable).",
        ),
    ] = None

    def flag_overrides(self, command: str) -> dict[str, tuple[str, Any]]:
        """The options that set a config key: key -> (the option, its value), for those given."""
        keys = {
            **{key: ("--seeds", self.seeds) for key in SEEDS_KEYS.get(command, ())},
            "device": ("--device", self.device),
            "execution.engine": ("--engine", self.engine),
            "execution.executor": ("--executor", self.executor),
            "execution.workers": ("--workers", self.workers),
            "execution.ray.address": ("--ray-address", self.ray_address),
        }
        return {key: flag for key, flag in keys.items() if flag[1] is not None}


class _FlagsWithoutType:
    """Help that shows no ``<bool>`` type for flags (``--help``, ``--force``): a flag takes no
    value, so there is no type to show."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class Command(_FlagsWithoutType, TyperCommand):
    """Every stabsweep command."""


class Group(_FlagsWithoutType, TyperGroup):
    """The ``stabsweep`` group itself."""


@dataclasses.dataclass
class CiOptions:
    """What the gated commands (lr, tune, find) take for CI: a baseline, and CI's formats."""

    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline",
            help="A summary.json (or run folder) to compare with; exit 3 when this run is less stable (gate: in the "
            "config).",
        ),
    ] = None
    baseline_any: Annotated[
        bool, typer.Option("--baseline-any", help="Compare with a baseline of another workload, grid or length.")
    ] = False
    junit: Annotated[
        Path | None, typer.Option("--junit", help="Write JUnit XML: a test case per gate criterion and per trial.")
    ] = None
    markdown: Annotated[
        Path | None,
        typer.Option("--markdown", help="Write the Markdown summary (also appended to $GITHUB_STEP_SUMMARY when set)."),
    ] = None


OPTION_GROUPS = {"options": CommonOptions, "ci": CiOptions}  # parameter name -> the dataclass it receives


def command(body: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``body`` every option of the groups it takes (``options: CommonOptions``, and
    ``ci: CiOptions`` for the gated commands) beside its own."""
    signature = inspect.signature(body, eval_str=True)
    groups = {name: cls for name, cls in OPTION_GROUPS.items() if name in signature.parameters}
    own = [p for p in signature.parameters.values() if p.name not in groups]
    shared = []
    for cls in groups.values():
        hints = typing.get_type_hints(cls, include_extras=True)
        shared += [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
            for f in dataclasses.fields(cls)
        ]

    @functools.wraps(body)
    def wrapper(**kwargs: Any) -> Any:
        built = {
            name: cls(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(cls)}) for name, cls in groups.items()
        }
        return body(**built, **kwargs)

    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared
    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper


class Session:
    """A command's run: its options, made into the Python API's request (api/commands.py, the
    one code path), and the outcome made into output and an exit code."""

    def __init__(self, name: str, options: CommonOptions) -> None:
        self.name, self.options, self.request_made = name, options, None

    def request(self, config: Path | None, ci: CiOptions | None = None) -> Any:
        """The API request for ``config`` (a path) under this command's options."""
        from stabsweep.api.commands import Request
        from stabsweep.config.loader import parse_overrides
        from stabsweep.procedures.ci import CiRequest

        options = self.options
        overrides = parse_overrides(options.set_ or [], flags=options.flag_overrides(self.name))
        self.request_made = Request(
            config=config,
            overrides=overrides,
            out=options.out,
            resume=options.resume,
            force=options.force,
            quiet=options.quiet or options.json_output,
            ci=CiRequest(ci.baseline, ci.baseline_any, ci.junit, ci.markdown) if ci else None,
            log_to=tuple(options.log_to or ()),
            keep_figures=False,
        )
        return self.request_made

    def run(self, command: str, config: Path | None, ci: CiOptions | None = None, **args: Any) -> None:
        """Run ``command`` on ``config`` through the Python API and end with its exit code."""

        def body() -> dict[str, Any]:
            from stabsweep.api.commands import run

            return run(command, self.request(config, ci), **args).summary

        self.execute(body)

    def execute(self, body: Callable[[], dict[str, Any]]) -> None:
        """Run a command body and turn its outcome into output and an exit code."""
        from stabsweep.report.console import make_console
        from stabsweep.results.lock import release_all

        console = make_console(quiet=False)
        try:
            summary = body()
        except UserError as exc:
            console.print(f"error: {exc.message}", markup=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except RunFailed as exc:
            if self.options.quiet or self.options.json_output:  # said even so, as pytest -q prints its failures
                from stabsweep.report.console import failure_lines

                for line in failure_lines(exc.summary):
                    console.print(line, markup=False, highlight=False, soft_wrap=True)
            self._print_json(exc.summary)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            ctx = self.request_made.ctx if self.request_made is not None else None
            where = f" in {ctx.run_root / self.name}" if ctx else ""
            console.print(f"interrupted: finished trials are saved{where}; rerun with --resume to finish", markup=False)
            raise typer.Exit(130) from None
        except Exception:  # noqa: BLE001 - a bug of ours: say so, with the traceback for a report
            console.print("internal error (a bug in stabsweep, please report it):", markup=False)
            console.print(traceback.format_exc(), markup=False)
            raise typer.Exit(1) from None
        finally:
            release_all()
        self._print_json(summary)

    def _print_json(self, summary: dict[str, Any] | None) -> None:
        if self.options.json_output and summary is not None:
            sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
