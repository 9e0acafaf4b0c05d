"""``stabsweep clip-report`` (module named after its results folder, `clip/`, as every clip module is)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stabsweep.cli.options import CommonOptions, Session, command


@command
def clip_report(
    source: Annotated[
        Path,
        typer.Argument(
            help="An lr run folder (reads its logged norms) or a CONFIG (trains one unclipped trial at --lr).",
            show_default=False,
        ),
    ],
    trial: Annotated[
        int | None,
        typer.Option(
            "--trial", help="Trial id of the run to read (default: the unstable base rate's trial, else the best)."
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr", help="Learning rate to train at (CONFIG), or of --sweep (default: the run's unstable base rate)."
        ),
    ] = None,
    percentile: Annotated[
        float | None,
        typer.Option("--percentile", min=0, max=100, help="Threshold percentile (default: clip_sweep.percentile, 90)."),
    ] = None,
    sweep: Annotated[
        bool,
        typer.Option(
            "--sweep",
            help="Train with each clip_sweep.percentiles threshold "
            "and without clipping, at the unstable rate (or --lr).",
        ),
    ] = False,
    *,
    options: CommonOptions,
) -> None:
    """Gradient-norm report: percentiles, a clipping threshold (p90) and the share of steps it clips."""
    session = Session("clip", options)
    session.run("clip", source, trial=trial, lr=lr, percentile=percentile, sweep=sweep)
