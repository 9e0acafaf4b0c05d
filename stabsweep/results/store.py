"""The results folder of one command: ``config.yaml``, ``trials.csv``, ``steps.csv``, ``evals.csv``.

Crash safety comes from write order. A finished trial appends its ``steps.csv`` and
``evals.csv`` rows first and its ``trials.csv`` row last, each file flushed as it is
written; the ``trials.csv`` row is the commit record. A sweep killed at any moment leaves at
worst orphan step rows of an unfinished trial and a last line cut short, which ``--resume``
drops before it runs exactly the trials that have no row. :meth:`finalize` sorts the files
so a resumed sweep's files read as if it had never been interrupted.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from stabsweep.config.loader import dump_config
from stabsweep.errors import UserError
from stabsweep.records import TrialStatus
from stabsweep.results import lock

if TYPE_CHECKING:
    import pandas as pd

    from stabsweep.config.schema import Config
    from stabsweep.records import TrialResult, TrialSpec

TRIALS, STEPS, EVALS, LAYERS = "trials.csv", "steps.csv", "evals.csv", "layers.csv"
SHARPNESS, SPIKES = "sharpness.csv", "spikes.csv"
RUN_ID = ".run_id"  # the run's id, naming its checkpoint folder
OUTPUTS = (TRIALS, STEPS, EVALS, LAYERS, SHARPNESS, SPIKES, "summary.json", "config.yaml")
_STATUSES = ", ".join(s.value for s in TrialStatus)


class ResultsStore:
    """Appends finished trials to one command's folder and reads them back."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.epoch_length: int | None = None  # batches per epoch: steps.csv's epoch and batch columns
        self.threshold: Any = None  # analysis.curvature.Threshold of the run's optimizer: sharpness.csv's bound
        self.ran: dict[int, dict[str, Any]] = {}  # trial id -> its trials.csv row, for every finished trial
        self.run_id = "run"  # names this run's checkpoint folder (``open`` sets it: see ``checkpoints``)

    @classmethod
    def open(cls, folder: Path, config: Config, *, resume: bool = False, force: bool = False) -> ResultsStore:
        """The store for a new run (``force`` clears old results, ``resume`` keeps them)."""
        if resume and force:
            raise UserError("--resume and --force contradict each other: give one")
        for path in (folder, *folder.parents):
            if path.exists() and not path.is_dir():
                raise UserError(f"{path}: exists and is not a folder; give --out a folder")
        lock.hold(folder)
        store = cls(folder)
        has_results = (folder / TRIALS).exists()
        if has_results and not (resume or force):
            raise UserError(f"{folder} already holds results: add --resume to finish them, or --force to start over")
        interrupted = store.interrupted()
        if interrupted and not (resume or force):
            raise UserError(
                f"{folder} holds an interrupted run's unfinished work ({interrupted}): add --resume to finish it, "
                "or --force to start over"
            )
        folder.mkdir(parents=True, exist_ok=True)
        if force:
            store.clear()
        elif resume and (has_results or interrupted):
            store.check_same_config(config)
            store.drop_unfinished()
        store.run_id = store._run_id(keep=resume)
        store.write_config(config)
        from stabsweep.analysis.curvature import threshold

        store.threshold = threshold(config.train.optimizer.name, config.train.optimizer.kwargs)
        return store

    def interrupted(self) -> str | None:
        """What a run stopped before its first ``trials.csv`` row left here (a finished trial's
        step rows, a checkpoint), in words; None when it left nothing. Such a folder is not
        empty: a new run would append to those rows, and ``--resume`` finishes it."""
        if (self.folder / TRIALS).exists():
            return None
        rows = [name for name in (STEPS, EVALS, LAYERS, SHARPNESS) if (self.folder / name).exists()]
        if rows:
            return f"{rows[0]} rows without their trials.csv row"
        from stabsweep.training.checkpoint import SUFFIX

        if any((self.folder / "checkpoints").glob(f"*/*{SUFFIX}")):
            return "a checkpoint of a running batch"
        return None

    @property
    def completed(self) -> set[int]:
        """Ids of the trials this folder holds a result for: resumed ones and those written since."""
        return set(self.ran)

    @property
    def checkpoints(self) -> Path:
        """Where running batches save themselves (training/checkpoint.py): a folder per run,
        kept by ``--resume`` and new otherwise, so a checkpoint another run left where this
        one cannot delete it (a Ray node's own disk, without shared storage) is never taken
        for this run's."""
        return self.folder / "checkpoints" / self.run_id

    def _run_id(self, keep: bool) -> str:
        import uuid

        path = self.folder / RUN_ID
        if keep and path.is_file():
            return path.read_text().strip()
        shutil.rmtree(self.folder / "checkpoints", ignore_errors=True)  # an earlier run's: never resumed now
        run_id = uuid.uuid4().hex[:12]
        path.write_text(run_id + "\n")
        return run_id

    def clear(self) -> None:
        """Delete this command's results, so a run starts over."""
        for name in OUTPUTS:
            (self.folder / name).unlink(missing_ok=True)
        for path in self.folder.glob("plots/*.png"):
            path.unlink()
        shutil.rmtree(self.folder / "checkpoints", ignore_errors=True)

    def write_config(self, config: Config) -> None:
        (self.folder / "config.yaml").write_text(dump_config(config, self.folder))

    def write(self, result: TrialResult) -> None:
        """Append one finished trial; the trials.csv row goes last (see module docstring)."""
        import pandas as pd

        if result.steps is not None and result.steps_run:
            log = result.steps
            steps = pd.DataFrame(
                {
                    "trial_id": result.spec.trial_id,
                    "step": range(1, result.steps_run + 1),
                    "lr": log.lr,
                    "train_loss": log.train_loss,
                    "grad_norm": log.grad_norm,
                    "clip_threshold": log.clip_threshold,
                    "clipped": log.clipped,
                    **batch_position(result.steps_run, self.epoch_length),
                }
            )
            self._append(STEPS, steps)
        if result.evals:
            self._append(EVALS, pd.DataFrame([{"trial_id": result.spec.trial_id, **e} for e in result.evals]))
        if result.layers is not None and len(result.layers.steps):
            self._append(LAYERS, layer_rows(result.spec.trial_id, result.layers))
        if result.sharpness:
            self._append(SHARPNESS, sharpness_rows(result, self.threshold))
        self._append(TRIALS, pd.DataFrame([result.row()]))
        self.ran[result.spec.trial_id] = result.row()

    def finalize(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """Sort every file by trial and step, rewrite them, and return them."""
        trials = self.read(TRIALS)
        trials = trials.sort_values("trial_id", kind="stable") if len(trials) else trials
        steps = self.read(STEPS)
        evals = self.read(EVALS)
        steps = steps.sort_values(["trial_id", "step"], kind="stable") if len(steps) else steps
        evals = evals.sort_values(["trial_id", "step"], kind="stable") if len(evals) else evals
        layers = self.read(LAYERS)
        layers = layers.sort_values(["trial_id", "step"], kind="stable") if len(layers) else layers
        sharpness = self.read(SHARPNESS)
        sharpness = sharpness.sort_values(["trial_id", "step"], kind="stable") if len(sharpness) else sharpness
        for name, frame in ((TRIALS, trials), (STEPS, steps), (EVALS, evals), (LAYERS, layers), (SHARPNESS, sharpness)):
            if len(frame.columns):
                frame.to_csv(self.folder / name, index=False)
        return trials.reset_index(drop=True), steps.reset_index(drop=True), evals.reset_index(drop=True)

    def write_summary(self, summary: dict[str, Any]) -> Path:
        return write_summary(self.folder, summary)

    def read(self, name: str) -> pd.DataFrame:
        """A CSV of this folder (empty when absent), statuses as :class:`TrialStatus`."""
        return read_table(self.folder / name)

    def check_same_config(self, config: Config) -> None:
        """--resume must finish the run that was started: refuse a config that changed what a trial is."""
        saved_path = self.folder / "config.yaml"
        if not saved_path.exists():
            return
        saved = yaml.safe_load(saved_path.read_text())
        current = yaml.safe_load(dump_config(config, self.folder))
        for settings in (saved, current):  # how trials run may change between runs; what they are may not
            settings.pop("execution", None)
            for sweep in ("lr_sweep", "warmup_sweep", "clip_sweep"):  # more seeds: only the new ones run
                (settings.get(sweep) or {}).pop("seeds", None)
        changed = _first_difference(saved, current)
        if changed:
            raise UserError(
                f"--resume: {changed} differs from {saved_path}; the finished trials would not "
                "match the new ones. Use --force to start over, or undo the change"
            )

    def mismatch(self, spec: TrialSpec) -> str | None:
        """How ``spec`` differs from what its finished trial ran with (rate, seed, the plan's
        columns: warmup, clip threshold, mitigation ...), in words; None when it does not."""
        saved = self.ran.get(spec.trial_id)
        if saved is None:
            return None
        planned = {"lr": spec.lr, "seed": spec.seed, **spec.columns}
        for key, value in planned.items():
            old = saved.get(key)
            if _same(old, value):
                continue
            return f"trial {spec.trial_id} ran with {key}={_text(old)} but is now planned with {key}={_text(value)}"
        return None

    def trials_of_phase(self, phase: str) -> set[int]:
        """The ids of the finished trials of one phase (sweep, early_check, probe, ...)."""
        trials = self.read(TRIALS)
        if "phase" not in trials:
            return set()
        return set(trials.loc[trials["phase"] == phase, "trial_id"].astype(int))

    def forget(self, trial_ids: set[int]) -> None:
        """Remove these trials' rows from every file: a result that no longer belongs to the plan
        (the early check of an lr* that more seeds moved)."""
        for name in (TRIALS, STEPS, EVALS, LAYERS, SHARPNESS):
            frame = self.read(name)
            if len(frame):
                frame[~frame["trial_id"].isin(trial_ids)].to_csv(self.folder / name, index=False)
        for trial_id in trial_ids:
            self.ran.pop(trial_id, None)

    def drop_unfinished(self) -> None:
        """Keep only finished trials' rows, so a resumed run redoes exactly the unfinished ones."""
        trials = self.read(TRIALS)
        if "status" in trials:  # a row cut short by a kill has no status: not finished
            trials = trials[trials["status"].notna() & trials["trial_id"].notna()]
            trials.to_csv(self.folder / TRIALS, index=False)
            self.ran = {int(row["trial_id"]): row for row in trials.to_dict("records")}
        done = self.completed
        for name in (STEPS, EVALS, LAYERS, SHARPNESS):
            frame = self.read(name)
            if len(frame):
                frame[frame["trial_id"].isin(done)].to_csv(self.folder / name, index=False)

    def _append(self, name: str, frame: pd.DataFrame) -> None:
        path = self.folder / name
        header = not path.exists() or path.stat().st_size == 0
        if not header:  # keep the file's column order when a later trial has more columns
            columns = _header(path)
            extra = [c for c in frame.columns if c not in columns]
            if extra:
                self.read(name).reindex(columns=columns + extra).to_csv(path, index=False)
                columns += extra
            frame = frame.reindex(columns=columns)
        with path.open("a", newline="") as handle:
            frame.to_csv(handle, header=header, index=False)
            handle.flush()


def layer_rows(trial_id: int, log: Any) -> pd.DataFrame:
    """layers.csv rows of one trial: one per logged step and parameter tensor."""
    import numpy as np
    import pandas as pd

    steps, layers = len(log.steps), len(log.layers)
    return pd.DataFrame(
        {
            "trial_id": trial_id,
            "step": np.repeat(log.steps, layers),
            "layer": np.tile(log.layers, steps),
            "grad_norm": np.asarray(log.grad_norm).reshape(-1),
            "weight_norm": np.asarray(log.weight_norm).reshape(-1),
            "update_ratio": np.asarray(log.update_ratio).reshape(-1),
        }
    )


def batch_position(steps_run: int, epoch_length: int | None) -> dict[str, Any]:
    """Where each step's batch sits in the data: ``epoch`` and ``batch`` (its index within the
    epoch, both from 0); without a known epoch length, ``batch`` is its index in the stream.
    Every trial takes one batch per step from the start of its seed's data, resumed where it
    stopped (training/common.py's DataStream), so the position follows from the step."""
    import numpy as np

    index = np.arange(steps_run)
    if epoch_length:
        return {"epoch": index // epoch_length, "batch": index % epoch_length}
    return {"epoch": np.full(steps_run, np.nan), "batch": index}


def sharpness_rows(result: TrialResult, threshold: Any) -> pd.DataFrame:
    """sharpness.csv rows of one trial: one per measurement, with the optimizer's bound at the
    rate of that step and λ over it (above 1: beyond the edge of stability)."""
    import numpy as np
    import pandas as pd

    steps, values, residuals = (np.asarray(column) for column in zip(*result.sharpness, strict=True))
    lrs = np.asarray(result.steps.lr)[np.minimum(steps, len(result.steps.lr) - 1)] if result.steps else np.nan
    bound = threshold.constant / lrs if threshold is not None else np.full(len(steps), np.nan)
    return pd.DataFrame(
        {
            "trial_id": result.spec.trial_id,
            "step": steps,
            "lr": lrs,
            "sharpness": values,
            "residual": residuals,
            "threshold": bound,
            "ratio": values / bound,
            "preconditioned": bool(threshold.preconditioned) if threshold is not None else False,
        }
    )


def read_table(path: Path) -> pd.DataFrame:
    """A results CSV, with its ``status`` column as :class:`TrialStatus`.

    A last line without its newline is a row a kill cut short: it is left out. Any other
    malformed line is an error naming the file and the line, never silently skipped.
    """
    import pandas as pd

    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    text = path.read_text()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    try:
        frame = pd.read_csv(io.StringIO(text)) if text.strip() else pd.DataFrame()
    except pd.errors.ParserError as exc:
        raise UserError(f"{path}: malformed CSV ({exc}); remove the bad line, or rerun with --force") from None
    if "status" in frame:
        try:
            frame["status"] = frame["status"].map(lambda v: TrialStatus.of(v) if isinstance(v, str) else v)
        except ValueError as exc:
            raise UserError(f"{path}: {exc} in the status column; expected one of {_STATUSES}") from None
    return frame


def _header(path: Path) -> list[str]:
    with path.open() as handle:
        return handle.readline().rstrip("\n").split(",")


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    return None if a == b else (path or "the config")


def _same(saved: Any, planned: Any) -> bool:
    """A trials.csv value read back against the plan's: numbers within float printing, empty = None."""
    if saved is None or (isinstance(saved, float) and math.isnan(saved)):
        return planned is None or (isinstance(planned, float) and math.isnan(planned))
    if isinstance(planned, (int, float)) and not isinstance(planned, bool):
        return isinstance(saved, (int, float)) and math.isclose(float(saved), float(planned), rel_tol=1e-6)
    return str(saved) == str(planned)


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def write_summary(folder: Path, summary: dict[str, Any]) -> Path:
    """A command's summary.json (also rewritten by the stability gate, after the command)."""
    path = folder / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return path
