"""``stabsweep report RUN``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report(
    run: Annotated[Path, typer.Argument(help="A run folder (the --out of stabsweep commands).", show_default=False)],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write the page (default: RUN/report.html).")
    ] = None,
) -> None:
    """One self-contained HTML page of a run: every stage's verdict, findings, plots and config."""
    from stabsweep.cli.options import CommonOptions, Session

    session = Session("report", CommonOptions())

    def body() -> dict:
        from stabsweep.procedures import report as procedure

        summary = procedure.run(run, output)
        typer.echo(f"Report: {summary['report']} ({', '.join(summary['stages'])})")
        return summary

    session.execute(body)
