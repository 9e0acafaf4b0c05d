"""``stabsweep export RUN --to tensorboard|mlflow``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stabsweep.config.names import Tracker


def export(
    run: Annotated[
        Path, typer.Argument(help="A run folder (the --out of stabsweep commands), or one command's folder.")
    ],
    to: Annotated[Tracker, typer.Option("--to", help="tensorboard (event files) or mlflow (a tracking store).")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="TensorBoard's log folder (default: RUN/tensorboard)."),
    ] = None,
) -> None:
    """Replay a finished run into TensorBoard (a run per trial, the HParams table) or MLflow
    (a run per command, a nested run per trial; MLFLOW_TRACKING_URI, else RUN/mlflow.db)."""
    from stabsweep.cli.options import CommonOptions, Session

    session = Session("export", CommonOptions())

    def body() -> dict:
        from stabsweep.api import export as run_export

        summary = run_export(run, to, output)
        typer.echo(summary["message"])
        if to == "tensorboard":
            typer.echo(f"View: tensorboard --logdir {summary['where']}")
        elif summary["where"].startswith("sqlite:"):
            typer.echo(f"View: mlflow ui --backend-store-uri {summary['where']}")
        return summary

    session.execute(body)
