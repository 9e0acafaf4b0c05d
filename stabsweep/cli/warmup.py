"""``stabsweep warmup``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stabsweep.cli.options import CommonOptions, Session, command


@command
def warmup(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="Sweep definition (YAML). Default with --from: the config saved in RUN/lr/.", show_default=False
        ),
    ] = None,
    from_run: Annotated[
        Path | None,
        typer.Option("--from", help="An lr run folder: its unstable_base_lr (RUN/lr/summary.json) and its config."),
    ] = None,
    unstable_lr: Annotated[
        float | None, typer.Option("--unstable-lr", help="Give the unstable base rate directly (needs CONFIG).")
    ] = None,
    multiplier: Annotated[
        list[float] | None,
        typer.Option(
            "--multiplier", help="base_lr = multiplier × unstable rate; repeatable (default: the config's, 10)."
        ),
    ] = None,
    *,
    options: CommonOptions,
) -> None:
    """Warmup sweep: the shortest linear warmup that lets 10× the unstable rate train stably."""
    session = Session("warmup", options)
    session.run("warmup", config, from_run=from_run, unstable_lr=unstable_lr, multiplier=multiplier)
