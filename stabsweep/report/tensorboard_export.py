"""A run's trials as TensorBoard runs, with the HParams plugin's table (docs/contract.md, "Export").

One TensorBoard run per trial, ``<output>/<command>/trial-<id>``: the per-step scalars of
``steps.csv`` (``train_loss``, ``grad_norm``, ``lr``, ``clipped``, ``clip_threshold``) and
the ``eval_*`` columns of ``evals.csv`` at their steps; and an HParams session whose
hyperparameters are the trial's settings (the swept values) and whose metrics are its
outcome (``trial/best_eval_loss``, ``trial/status`` as STATUS_CODES, ``trial/diverged_step``,
...), so the parallel-coordinates view shows where the stable trials end. Written with
``torch.utils.tensorboard`` (TensorBoard's own event-file writer; its ``hparams`` summary is
the one ``SummaryWriter.add_hparams`` writes, here into the trial's own run).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from stabsweep.report.trackers import OUTCOMES, STEP_METRICS, Stage, plain

METRIC_PREFIX = "trial/"


def export(stages: list[Stage], output: Path) -> str:
    """Write every stage's trials under ``output/<stage>/`` (an earlier export there is replaced); the folder."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    for stage in stages:
        folder = output / stage.name
        if folder.exists():
            shutil.rmtree(folder)  # a replay, not a second copy of the same trials
        discrete = _discrete_domains(stage)
        metrics = {METRIC_PREFIX + name: 0.0 for name in OUTCOMES}  # the HParams columns: the same in every session
        steps = stage.steps.groupby("trial_id") if len(stage.steps) else {}
        evals = stage.evals.groupby("trial_id") if len(stage.evals) else {}
        for _, row in stage.trials.iterrows():
            trial_id = int(row["trial_id"])
            writer = SummaryWriter(log_dir=str(folder / f"trial-{trial_id:03d}"))
            try:
                if trial_id in getattr(steps, "groups", {}):
                    _scalars(writer, steps.get_group(trial_id), STEP_METRICS)
                if trial_id in getattr(evals, "groups", {}):
                    part = evals.get_group(trial_id)
                    _scalars(writer, part, [c for c in part.columns if c.startswith("eval_")])
                hp = {**stage.hparams(row), "command": stage.name}
                experiment, start, end = hparams(hp, metrics, hparam_domain_discrete=discrete)
                for summary in (experiment, start, end):
                    writer.file_writer.add_summary(summary)
                for name, value in stage.outcome(row).items():
                    writer.add_scalar(METRIC_PREFIX + name, value, 0)
            finally:
                writer.close()
    return str(output)


def _scalars(writer: Any, frame: Any, columns: Any) -> None:
    """Each column of ``frame`` (rows of one trial, with ``step``) as a scalar per step; empty cells skipped."""
    steps = frame["step"].to_numpy()
    for column in columns:
        if column not in frame:
            continue
        values = frame[column]
        if values.dtype == object:  # a column of booleans read back with blanks
            values = values.map({"True": 1.0, "False": 0.0, True: 1.0, False: 0.0})
        values = values.astype(float).to_numpy()
        for step, value in zip(steps, values, strict=True):
            if value == value:  # NaN: the column has no value at this step (no clipping)
                writer.add_scalar(column, value, int(step))


def _discrete_domains(stage: Stage) -> dict[str, list[Any]]:
    """The string-valued settings and every value each takes, so HParams offers them as choices."""
    domains: dict[str, list[Any]] = {"command": [stage.name]}
    for column in stage.settings:
        values = [plain(v) for v in stage.trials[column].unique()]
        values = [v for v in values if v is not None]
        if values and all(isinstance(v, str) for v in values):
            domains[column] = sorted(values)
    return domains
