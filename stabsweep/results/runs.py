"""Reading an earlier ``stabsweep lr`` run: its summary, config and tables.

``warmup --from RUN`` and ``clip-report RUN`` start from what ``lr`` found; every way the
run folder can be unusable is a UserError naming the missing piece.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stabsweep.errors import UserError

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class LrRun:
    root: Path  # the run folder given by the user (holds lr/)
    summary: dict[str, Any]

    @property
    def folder(self) -> Path:
        return self.root / "lr"

    @property
    def config_path(self) -> Path:
        return self.folder / "config.yaml"

    def trials(self) -> pd.DataFrame:
        return self._csv("trials.csv")

    def steps(self) -> pd.DataFrame:
        return self._csv("steps.csv")

    def _csv(self, name: str) -> pd.DataFrame:
        from stabsweep.results.store import read_table

        path = self.folder / name
        if not path.is_file():
            raise UserError(f"{path}: missing; the lr run is incomplete (rerun stabsweep lr with --resume)")
        return read_table(path)


def read_lr_run(root: Path) -> LrRun:
    """The lr run under ``root`` (``root/lr/summary.json``); ``root/lr`` itself is accepted too."""
    if (root / "summary.json").is_file() and root.name == "lr":
        root = root.parent
    path = root / "lr" / "summary.json"
    if not root.is_dir():
        raise UserError(f"{root}: run folder not found")
    if not path.is_file():
        raise UserError(f"{path}: not found; is {root} the --out folder of a finished `stabsweep lr` run?")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if summary.get("command") != "lr":
        raise UserError(f"{path}: not the summary of a `stabsweep lr` run")
    return LrRun(root, summary)
