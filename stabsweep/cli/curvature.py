"""``stabsweep curvature CONFIG``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stabsweep.cli.options import CommonOptions, Session, command


@command
def curvature(
    config: Annotated[Path, typer.Argument(help="Sweep definition (YAML).", show_default=False)],
    lr: Annotated[
        float | None, typer.Option("--lr", help="Also say where this rate sits against the predicted edge.")
    ] = None,
    *,
    options: CommonOptions,
) -> None:
    """Sharpness at initialisation (the top Hessian eigenvalue) against the optimizer's stability threshold.

    With an lr run in the same --out folder, the rate it predicts is set beside that sweep's edge;
    an lr run with train.log_sharpness_every set adds how far training sharpened.
    """
    session = Session("curvature", options)
    session.run("curvature", config, lr=lr)
