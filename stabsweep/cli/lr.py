"""``stabsweep lr CONFIG``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stabsweep.cli._common import Device, Force, Json, Out, Quiet, Resume, Set, context, execute, load


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
) -> None:
    """Learning-rate sweep: find the best rate (lr*) and the rate where training becomes unstable."""
    ctx = None

    def body() -> dict:
        nonlocal ctx
        from stabsweep.procedures import lr as procedure

        ctx = context(
            load(config, set_), out=out, device=device, resume=resume, force=force, quiet=quiet, json_output=json_output
        )
        return procedure.run(ctx, early_check=early_check)

    execute(body, json_output=json_output, quiet=quiet, run_folder=lambda: ctx.run_root / "lr" if ctx else None)
