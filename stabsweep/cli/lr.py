"""``stabsweep lr CONFIG``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stabsweep.cli._common import (
    Common,
    Device,
    Engine,
    Executor,
    Force,
    Json,
    Out,
    Quiet,
    RayAddress,
    Resume,
    Set,
    Workers,
    execute,
)


def lr(
    config: Annotated[Path, typer.Argument(help="Sweep definition (YAML).", show_default=False)],
    early_check: Annotated[
        bool,
        typer.Option(
            "--early-check", help="Also run ~500 steps at 2 × lr*, evaluated every step, to catch early instability."
        ),
    ] = False,
    out: Out = None,
    set_: Set = None,
    device: Device = None,
    resume: Resume = False,
    force: Force = False,
    quiet: Quiet = False,
    json_output: Json = False,
    engine: Engine = None,
    executor: Executor = None,
    workers: Workers = None,
    ray_address: RayAddress = None,
) -> None:
    """Learning-rate sweep: find the best rate (lr*) and the rate where training becomes unstable."""
    common = Common(out, set_, device, resume, force, quiet, json_output, engine, executor, workers, ray_address)

    def body() -> dict:
        from stabsweep.procedures import lr as procedure

        return procedure.run(common.context(config), early_check=early_check)

    execute("lr", common, body)
