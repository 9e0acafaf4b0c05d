"""Reading earlier runs: an ``lr`` run (its summary, config and tables) and a ``--baseline`` summary.

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


def read_baseline(path: Path, command: str) -> tuple[Path, dict[str, Any]]:
    """The ``summary.json`` a ``--baseline`` names: the file itself, or a run folder holding
    ``<command>/summary.json``, or a command folder holding ``summary.json``. Its ``stability``
    block is what the gate compares; anything else is a UserError naming the file."""
    if path.is_dir():
        inside = [path / command / "summary.json", path / "summary.json"]
        found = next((p for p in inside if p.is_file()), None)
        if found is None:
            raise UserError(
                f"--baseline {path}: a folder without {command}/summary.json; give a stabsweep {command} "
                "summary.json or the --out folder of a finished run"
            )
        path = found
    elif not path.exists():
        raise UserError(f"--baseline {path}: no such file or folder")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--baseline {path}: cannot be read ({type(exc).__name__}: {exc})") from None
    try:
        summary = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"--baseline {path}: not JSON ({exc.msg} at line {exc.lineno}); expected a summary.json"
        ) from None
    expected = f"the summary.json of a stabsweep {command} run"
    if not isinstance(summary, dict) or "command" not in summary:
        raise UserError(f"--baseline {path}: not a stabsweep summary (no 'command' key); expected {expected}")
    if summary["command"] != command:
        raise UserError(f"--baseline {path}: a summary of `stabsweep {summary['command']}`; expected {expected}")
    if summary.get("nothing_trained"):
        raise UserError(f"--baseline {path}: that run trained nothing, so there is nothing to compare with")
    block = summary.get("stability")
    keys = ("kind", "unstable_base_lr", "best_objective", "objective", "rates", "grid", "setup")
    if not isinstance(block, dict) or any(key not in block for key in keys):
        raise UserError(
            f"--baseline {path}: no 'stability' block (written by stabsweep 0.2 and later); rerun the baseline"
        )
    return path, summary
