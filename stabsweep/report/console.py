"""Console output with rich: progress while trials run, then a table, a verdict, a next step.

Everything goes to stderr, so ``--json`` can own stdout.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from stabsweep.records import TrialStatus

if TYPE_CHECKING:
    import pandas as pd

STATUS_STYLE = {
    TrialStatus.OK: "green",
    TrialStatus.UNSTABLE: "yellow",
    TrialStatus.DIVERGED: "red",
    TrialStatus.LEARNED_NOTHING: "red",
    TrialStatus.FAILED: "magenta",
}


HEADERS = {
    "best_eval_loss": "best eval",
    "final_train_loss": "final train",
    "diverged_step": "diverged at",
    "warmup_steps": "warmup",
    "post_warmup_steps": "post",
    "clip_threshold": "clip at",
}


WIDE = 160  # columns when stderr is not a terminal (a CI log, a pipe) and COLUMNS is not set


def make_console(quiet: bool = False) -> Console:
    """The console on stderr (``--json`` owns stdout): the terminal's width on a terminal, else
    ``COLUMNS`` or a wide default, so a CI log does not break table rows at rich's 80."""
    console = Console(stderr=True, quiet=quiet, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = WIDE
    return console


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trials_table(trials: pd.DataFrame, columns: list[str], title: str, marks: dict[int, str] | None = None) -> Table:
    """One row per trial; ``marks`` adds a note (e.g. 'lr*') to chosen trial ids."""
    marks = marks or {}
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        table.add_column(
            HEADERS.get(column, column.replace("_", " ")),
            justify="left" if column in ("status", "reason", "phase") else "right",
            overflow="fold",
            ratio=3 if column == "reason" else None,
        )
    table.add_column("note")
    for _, row in trials.iterrows():
        cells = []
        for column in columns:
            value = row.get(column)
            text = _fmt(value)
            if column == "status":
                text = f"[{STATUS_STYLE[TrialStatus.of(value)]}]{text}[/]"
            cells.append(text)
        cells.append(marks.get(int(row["trial_id"]), "") if "trial_id" in row else "")
        table.add_row(*cells)
    return table


def print_verdict(
    console: Console, verdict: str, warnings: list[str], next_command: str | None, files: str | None = None
) -> None:
    console.print()
    console.print(f"[bold]Verdict:[/] {verdict}")
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    if files:
        console.print(f"[dim]Results in {files}[/]")
    if next_command:
        console.print(f"[bold]Next:[/] {next_command}", soft_wrap=True)


def failure_lines(summary: dict[str, Any]) -> list[str]:
    """What a failed run (exit 3) must say even under ``--quiet``, one line each: the error
    when nothing trained (or ``curvature`` measured nothing), each failed ``doctor`` check, each
    failed criterion of the gate."""
    command = summary.get("command", "stabsweep")
    lines = []
    if summary.get("nothing_trained") or summary.get("nothing_measured"):
        lines.append(f"{command}: {summary['verdict']}")
    for check in summary.get("checks") or []:
        if check.get("status") == "fail":
            advice = f" ({check['advice']})" if check.get("advice") else ""
            lines.append(f"doctor: {check['name']} failed: {check['measured']}{advice}")
    gate = summary.get("gate") or {}
    for criterion in gate.get("criteria") or []:
        if not criterion.get("passed"):
            lines.append(f"{command}: stability gate failed: {criterion['name']}: {criterion['message']}")
    return lines
