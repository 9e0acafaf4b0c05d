"""``stabsweep tune CONFIG``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stabsweep.cli.options import CiOptions, CommonOptions, Session, command


@command
def tune(
    config: Annotated[Path, typer.Argument(help="Sweep definition (YAML).", show_default=False)],
    multiplier: Annotated[
        float | None,
        typer.Option(
            "--multiplier",
            min=1.0,
            max=1e6,
            help="Extend the confirm grid to at least this × the unstable rate (default: the warmup multiplier, 10).",
        ),
    ] = None,
    *,
    options: CommonOptions,
    ci: CiOptions,
) -> None:
    """The whole procedure: lr → warmup → clip → confirm sweeps with each fix; a config to train with."""
    session = Session("tune", options)
    session.run("tune", config, ci, multiplier=multiplier)
