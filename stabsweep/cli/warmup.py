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

    def body() -> dict:
        from stabsweep.errors import UserError
        from stabsweep.procedures import warmup as procedure
        from stabsweep.results.runs import read_lr_run

        if (from_run is None) == (unstable_lr is None):
            raise UserError("give exactly one of --from RUN (an lr run) or --unstable-lr X")
        lr_run = read_lr_run(from_run) if from_run is not None else None
        if lr_run is not None:
            rate = lr_run.summary.get("unstable_base_lr")
            if rate is None:
                raise UserError(
                    f"{lr_run.folder / 'summary.json'}: the lr sweep found no unstable rate, so there is nothing "
                    f"to warm up past; extend the lr grid upwards: {lr_run.summary.get('next_command')}"
                )
        else:
            if config is None:
                raise UserError("--unstable-lr needs a CONFIG to know what to train")
            if unstable_lr <= 0:
                raise UserError(f"--unstable-lr {unstable_lr:g}: expected a positive learning rate")
            rate = unstable_lr
        extra = [f"warmup_sweep.multipliers=[{', '.join(map(str, multiplier))}]"] if multiplier else []
        ctx = session.context(config or lr_run.config_path, lr_run.root if lr_run else None, extra)
        return procedure.run(ctx, float(rate), lr_run)

    session.execute(body)
