"""``stabsweep report RUN``: every stage found under a run folder on one self-contained page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stabsweep.errors import UserError
from stabsweep.report.html import ORDER, Stage, page
from stabsweep.version import __version__


def stages_of(run: Path) -> list[Stage]:
    """The stages under ``run`` (RUN/<command>/summary.json), in the playbook's order. A stage
    whose summary cannot be read is left out with a warning in its place, never a crash."""
    from stabsweep.results.store import read_table

    stages = []
    for name in ORDER:
        folder = run / name
        path = folder / "summary.json"
        if not path.is_file():
            continue
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(summary, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            summary = {"verdict": f"{path} could not be read: {exc}", "warnings": []}
        trials = None
        if (folder / "trials.csv").is_file():
            try:
                trials = read_table(folder / "trials.csv")
            except Exception as exc:  # noqa: BLE001 - a table that cannot be read is a warning on the page
                summary.setdefault("warnings", []).append(f"trials.csv could not be read: {exc}")
        config = (
            (folder / "config.yaml").read_text(encoding="utf-8", errors="replace")
            if (folder / "config.yaml").is_file()
            else None
        )
        plots = sorted((folder / "plots").glob("*.png")) if (folder / "plots").is_dir() else []
        stages.append(Stage(name, folder, summary, trials, config, plots))
    return stages


def run(run_folder: Path, output: Path | None = None) -> dict[str, Any]:
    if not run_folder.is_dir():
        raise UserError(f"{run_folder}: run folder not found")
    stages = stages_of(run_folder)
    if not stages:
        known = ", ".join(f"{name}/" for name in ORDER)
        raise UserError(f"{run_folder}: no stage of a stabsweep run here (looked for {known} with a summary.json)")
    output = output or run_folder / "report.html"
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(page(run_folder, stages, __version__), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{output}: cannot be written ({exc.strerror or exc})") from None
    return {"command": "report", "run": str(run_folder), "report": str(output), "stages": [s.name for s in stages]}
