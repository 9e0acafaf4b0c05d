"""``stabsweep find CONFIG``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stabsweep.cli.options import CiOptions, CommonOptions, Session, command


@command
def find(
    config: Annotated[Path, typer.Argument(help="Sweep definition (YAML).", show_default=False)],
    *,
    options: CommonOptions,
    ci: CiOptions,
) -> None:
    """Range test: one short run with a growing rate; suggestions and a grid for `lr` (lr_sweep.lrs: auto)."""
    session = Session("find", options)
    session.run("find", config, ci)
