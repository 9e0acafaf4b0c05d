"""``stabsweep spikes RUN``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def spikes(
    run: Annotated[Path, typer.Argument(help="A run folder (reads its lr/), or one command's folder.")],
    sigma: Annotated[
        float | None,
        typer.Option("--sigma", help="Standard deviations above the window (default: detect.spike_sigma)."),
    ] = None,
    window: Annotated[
        int | None, typer.Option("--window", help="Steps the mean and σ are taken over (default: detect.spike_window).")
    ] = None,
) -> None:
    """Loss spikes of a finished run: which batch caused each, the data or the optimizer, and a plot."""
    from stabsweep.cli.options import CommonOptions, Session

    session = Session("spikes", CommonOptions())

    def body() -> dict:
        from stabsweep.procedures import spikes as procedure

        return procedure.run(run, sigma=sigma, window=window)

    session.execute(body)
