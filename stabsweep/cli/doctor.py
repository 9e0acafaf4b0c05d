"""``stabsweep doctor CONFIG``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stabsweep.cli.options import CommonOptions, Session, command


@command
def doctor(
    config: Annotated[Path, typer.Argument(help="Sweep definition (YAML).", show_default=False)],
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr", help="Rate of the training checks (default: lr* of an lr run, the range test's, else a default)."
        ),
    ] = None,
    *,
    options: CommonOptions,
) -> None:
    """Sanity checks before sweeping: data, labels, loss at init, overfit one batch, gradients, dead units, layers."""
    session = Session("doctor", options)
    session.run("doctor", config, lr=lr)
