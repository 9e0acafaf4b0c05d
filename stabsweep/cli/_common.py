"""Options every command shares, and the one place errors become exit codes.

Exit codes (DESIGN §1): 0 success (instability found is still success), 2 bad input, 1 an
internal error, 130 interrupted (finished trials are kept; rerun with --resume).
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from stabsweep.errors import UserError

Out = Annotated[
    Path | None, typer.Option("--out", help="Run folder; results go to OUT/<command>/. Default: runs/<config name>/.")
]
Set = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set train.steps=200 (repeatable; values are YAML)."),
]
Device = Annotated[
    str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps (default: the config's device).")
]
Resume = Annotated[bool, typer.Option("--resume", help="Keep finished trials and run only the missing ones.")]
Force = Annotated[bool, typer.Option("--force", help="Delete this command's earlier results and start over.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
Json = Annotated[bool, typer.Option("--json", help="Print summary.json on stdout (for CI smoke runs).")]


class EngineName(str, Enum):
    auto = "auto"
    vectorized = "vectorized"
    sequential = "sequential"


class ExecutorName(str, Enum):
    local = "local"
    process = "process"
    ray = "ray"


Engine = Annotated[
    EngineName | None,
    typer.Option(
        "--engine", help="auto: trials as one vectorized computation where the model allows (execution.engine)."
    ),
]
Executor = Annotated[
    ExecutorName | None,
    typer.Option("--executor", help="local, process (a worker per core or GPU) or ray (execution.executor)."),
]
Workers = Annotated[
    int | None, typer.Option("--workers", min=1, help="Worker processes for --executor process (execution.workers).")
]
RayAddress = Annotated[
    str | None,
    typer.Option("--ray-address", help="Ray cluster to join, e.g. auto or ray://head:10001 (execution.ray.address)."),
]


@dataclass
class Common:
    """The options every command takes, and the context they make for a procedure."""

    out: Path | None
    set_: list[str] | None
    device: str | None
    resume: bool
    force: bool
    quiet: bool
    json_output: bool
    engine: EngineName | None = None
    executor: ExecutorName | None = None
    workers: int | None = None
    ray_address: str | None = None
    ctx: Any = None  # set by context(); names the run folder when a sweep is interrupted

    def context(self, config_path: Path, default_out: Path | None = None, extra_overrides: list[str] = ()) -> Any:
        from stabsweep.config.loader import load_config, parse_overrides
        from stabsweep.procedures.context import Context, RunOptions
        from stabsweep.report.console import make_console

        execution = {
            "execution.engine": self.engine and self.engine.value,
            "execution.executor": self.executor and self.executor.value,
            "execution.workers": self.workers,
            "execution.ray.address": self.ray_address,
        }
        flags = [f"{key}={json.dumps(value)}" for key, value in execution.items() if value is not None]
        config = load_config(config_path, parse_overrides([*(self.set_ or []), *extra_overrides, *flags]))
        options = RunOptions(
            out=self.out or default_out,
            device=self.device,
            resume=self.resume,
            force=self.force,
            quiet=self.quiet or self.json_output,
        )
        self.ctx = Context(config, options, make_console(quiet=options.quiet))
        return self.ctx


def execute(command: str, common: Common, body: Callable[[], dict[str, Any]]) -> None:
    """Run a command body and turn its outcome into output and an exit code."""
    from stabsweep.report.console import make_console

    console = make_console(quiet=False)
    try:
        summary = body()
    except UserError as exc:
        console.print(f"error: {exc.message}", markup=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        where = f" in {common.ctx.run_root / command}" if common.ctx else ""
        console.print(f"interrupted: finished trials are saved{where}; rerun with --resume to finish", markup=False)
        raise typer.Exit(130) from None
    except Exception:  # noqa: BLE001 - a bug of ours: say so, with the traceback for a report
        console.print("internal error (a bug in stabsweep, please report it):", markup=False)
        console.print(traceback.format_exc(), markup=False)
        raise typer.Exit(1) from None
    if common.json_output:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
