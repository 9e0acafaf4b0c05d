"""``stabsweep lr CONFIG``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stabsweep.cli.options import CiOptions, CommonOptions, Session, command


@command
def lr(
    config: Annotated[Path, typer.Argument(help="Sweep definition (YAML).", show_default=False)],
    early_check: Annotated[
        bool,
        typer.Option(
            "--early-check", help="Also run ~500 steps at 2 × lr*, evaluated every step, to catch early instability."
        ),
    ] = False,
    *,
    options: CommonOptions,
    ci: CiOptions,
) -> None:
    """Learning-rate sweep: find the best rate (lr*) and the rate where training becomes unstable."""
    session = Session("lr", options)
    session.run("lr", config, ci, early_check=early_check)
