"""A finished run, replayed into the trackers users already watch (docs/contract.md, "Export").

Export reads only what a command wrote (``summary.json`` and the CSV files), so a trial of
the vectorized engine, of a worker process or of a resumed sweep exports like any other. The
writers are the trackers' own: TensorBoard's event files through ``torch.utils.tensorboard``
(``report/tensorboard_export.py``), MLflow's client (``report/mlflow_export.py``). Each is an optional
extra; a missing one is a UserError naming it.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stabsweep.errors import UserError
from stabsweep.records import TrialStatus

if TYPE_CHECKING:
    import pandas as pd

ORDER = ("doctor", "find", "lr", "curvature", "warmup", "clip", "tune")  # the playbook's order (report/html.py's)
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}  # tracker: (module, extra)
# A trial's status as a number, for the trackers' metric columns (an HParams metric must be one):
# TrialStatus's order, ok 0, unstable 1, diverged 2, learned_nothing 3, failed 4.
STATUS_CODES = {status.value: code for code, status in enumerate(TrialStatus)}
STEP_METRICS = ("train_loss", "grad_norm", "lr", "clipped", "clip_threshold")  # steps.csv columns exported per step
OUTCOMES = ("status", "best_eval_loss", "final_train_loss", "diverged_step", "steps_run", "clipped_fraction")


def require(tracker: str) -> None:
    """Raise UserError naming the extra to install when ``tracker``'s library is missing."""
    if tracker not in EXTRAS:
        raise UserError(f"--to {tracker}: expected one of {', '.join(EXTRAS)}")
    module, extra = EXTRAS[tracker]
    if importlib.util.find_spec(module) is None:
        raise UserError(f"exporting to {tracker} needs its library: pip install 'stabsweep[{extra}]'")


@dataclass
class Stage:
    """One command's folder, read for export."""

    name: str
    folder: Path
    summary: dict[str, Any]
    trials: pd.DataFrame
    steps: pd.DataFrame
    evals: pd.DataFrame

    @property
    def settings(self) -> list[str]:
        """The trials.csv columns that say what a trial is (between ``trial_id`` and ``status``):
        the swept values (lr, seed, warmup_steps, clip_threshold, mitigation, ...)."""
        columns = list(self.trials.columns)
        if "status" not in columns:
            return [c for c in columns if c != "trial_id"]
        return columns[1 : columns.index("status")]

    def hparams(self, row: Any) -> dict[str, Any]:
        """A trial's settings as plain values; a setting it does not have (NaN: unclipped) is left out."""
        out = {}
        for column in self.settings:
            value = plain(row[column])
            if value is not None:
                out[column] = value
        return out

    def outcome(self, row: Any) -> dict[str, float]:
        """A trial's outcome as numbers: ``status`` by STATUS_CODES; what it lacks is left out."""
        out = {}
        for column in OUTCOMES:
            if column not in row:
                continue
            value = STATUS_CODES.get(str(row[column])) if column == "status" else plain(row[column])
            if isinstance(value, bool):
                value = float(value)
            if isinstance(value, (int, float)):
                out[column] = float(value)
        return out


def plain(value: Any) -> Any:
    """A pandas cell as a Python value: numpy scalars unwrapped, NaN and empty as None."""
    if hasattr(value, "item"):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    return value


def stages_in(folder: Path) -> list[Path]:
    """The command folders of ``folder``: itself when it is one, else its stages in the playbook's order."""
    if (folder / "summary.json").is_file():
        return [folder]
    return [folder / name for name in ORDER if (folder / name / "summary.json").is_file()]


def read_stage(folder: Path) -> Stage:
    import pandas as pd

    from stabsweep.results.store import read_table

    def table(name: str) -> pd.DataFrame:
        path = folder / name
        return read_table(path) if path.is_file() else pd.DataFrame()

    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    return Stage(folder.name, folder, summary, table("trials.csv"), table("steps.csv"), table("evals.csv"))
