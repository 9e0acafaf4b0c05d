"""``stabsweep export`` and ``--log-to``: a finished run replayed into a tracker (docs/contract.md, "Export")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stabsweep.errors import UserError
from stabsweep.report.trackers import ORDER, read_stage, require, stages_in


def export_run(
    run: Path, tracker: str, *, output: Path | None = None, stages: list[Path] | None = None
) -> dict[str, Any]:
    """Export the stages of ``run`` (a run folder or one command's folder; ``stages`` picks
    some) to ``tracker``. Returns ``{"tracker", "where", "stages", "trials", "message"}``."""
    require(tracker)
    if not run.is_dir():
        raise UserError(f"{run}: run folder not found")
    folders = stages if stages is not None else stages_in(run)
    if not folders:
        known = ", ".join(f"{name}/" for name in ORDER)
        raise UserError(f"{run}: no stage of a stabsweep run here (looked for {known} with a summary.json)")
    root = run if not (run / "summary.json").is_file() else run.parent
    read = [read_stage(folder) for folder in folders]
    if tracker == "tensorboard":
        from stabsweep.report import tensorboard_export as tensorboard

        where = tensorboard.export(read, output or root / "tensorboard")
    else:
        from stabsweep.report import mlflow_export as mlflow

        where = mlflow.export(read, root)
    trials = sum(len(stage.trials) for stage in read)
    names = ", ".join(stage.name for stage in read)
    return {
        "tracker": tracker,
        "where": where,
        "stages": [stage.name for stage in read],
        "trials": trials,
        "message": f"Exported {names} ({trials} trials) to {tracker}: {where}",
    }
