"""The ``stabsweep`` command line: one module per command, all thin (DESIGN §1)."""

from __future__ import annotations

import typer

from stabsweep.cli import clip_report, lr, warmup

app = typer.Typer(
    name="stabsweep",
    help="Find where training becomes unstable, then fix it with warmup and clipping "
    "(the Deep Learning Tuning Playbook's instability procedure).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command("lr")(lr.lr)
app.command("warmup")(warmup.warmup)
app.command("clip-report")(clip_report.clip_report)


def main() -> None:
    app()
