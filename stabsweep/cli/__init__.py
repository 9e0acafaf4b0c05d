"""The ``stabsweep`` command line: one module per command, all thin."""

from __future__ import annotations

from typing import Annotated

import typer

from stabsweep.cli import clip, curvature, doctor, export, find, lr, report, spikes, tune, warmup
from stabsweep.cli.options import Command, Group

app = typer.Typer(
    name="stabsweep",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    cls=Group,
)


def _version(value: bool) -> None:
    if value:
        from stabsweep.version import __version__

        typer.echo(f"stabsweep {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Find where training becomes unstable, then fix it with warmup and clipping (the Deep Learning Tuning
    Playbook's instability procedure)."""


app.command("doctor", cls=Command)(doctor.doctor)
app.command("find", cls=Command)(find.find)
app.command("lr", cls=Command)(lr.lr)
app.command("curvature", cls=Command)(curvature.curvature)
app.command("warmup", cls=Command)(warmup.warmup)
app.command("clip-report", cls=Command)(clip.clip_report)
app.command("tune", cls=Command)(tune.tune)
app.command("spikes", cls=Command)(spikes.spikes)
app.command("report", cls=Command)(report.report)
app.command("export", cls=Command)(export.export)


def main() -> None:
    app()
