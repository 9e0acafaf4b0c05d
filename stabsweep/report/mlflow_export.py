"""A run's commands and trials as MLflow runs (docs/contract.md, "Export").

One parent run per command: the summary's findings as params (strings, numbers) and metrics
(the numeric ones), the verdict as the run's description, and the plots, ``summary.json``,
``config.yaml`` (and ``recommended.yaml``, the run's ``report.html``) as artifacts. Under
it, a nested run per trial: its settings as params, its outcome as metrics and
``steps.csv``/``evals.csv`` as per-step metrics. The experiment is the config's name.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else a local store beside the run
(``sqlite:///RUN/mlflow.db``, artifacts in ``RUN/mlartifacts``; MLflow's file store is in
maintenance mode). Exporting the same folder again soft-deletes the runs it exported before
(``mlflow gc`` removes them for good), so a tracker holds one copy of each command.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from stabsweep.records import TrialStatus
from stabsweep.report.trackers import STEP_METRICS, Stage, plain

FOLDER_TAG = "stabsweep.folder"  # the command folder a run was exported from (resolved path)
BATCH = 1000  # MLflow's limit on metrics per log_batch call
PARAM_LIMIT = 500  # characters of a param value every MLflow store accepts


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI``, or the local store beside the run."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def export(stages: list[Stage], root: Path) -> str:
    """Write every stage as a parent run with a nested run per trial; the tracking URI."""
    import logging

    from mlflow.tracking import MlflowClient

    quiet = logging.getLogger("mlflow.store.db.utils")  # "Creating initial MLflow database tables..." on stderr
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        return _export(MlflowClient, stages, root)
    finally:
        quiet.setLevel(level)


def _export(client_class: Any, stages: list[Stage], root: Path) -> str:
    uri = tracking_uri(root)
    client = client_class(tracking_uri=uri)
    experiment = _experiment(client, _name_of(stages[0]), root, local="MLFLOW_TRACKING_URI" not in os.environ)
    for stage in stages:
        _forget_earlier(client, experiment, stage.folder)
        parent = client.create_run(
            experiment,
            run_name=stage.name,
            tags={
                FOLDER_TAG: str(stage.folder.resolve()),
                "stabsweep.command": stage.name,
                "mlflow.note.content": str(stage.summary.get("verdict", "")),
            },
        )
        parent_id = parent.info.run_id
        params, metrics = _findings(stage.summary)
        _log(client, parent_id, params=params, metrics=[(k, v, 0) for k, v in metrics.items()])
        for path in _artifacts(stage):
            client.log_artifact(parent_id, str(path), artifact_path="plots" if path.suffix == ".png" else None)
        for _, row in stage.trials.iterrows():
            _trial(client, experiment, parent_id, stage, row)
        client.set_terminated(parent_id, "FINISHED")
    return uri


def _experiment(client: Any, name: str, root: Path, local: bool) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (root / "mlartifacts").resolve().as_uri() if local else None
    return client.create_experiment(name, artifact_location=location)


def _name_of(stage: Stage) -> str:
    """The experiment: the config's name (config.yaml's ``name``), else the run folder's."""
    import yaml

    path = stage.folder / "config.yaml"
    try:
        name = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("name")
    except (OSError, yaml.YAMLError, AttributeError):
        name = None
    return str(name or stage.folder.resolve().parent.name)


def _forget_earlier(client: Any, experiment: str, folder: Path) -> None:
    """Soft-delete the runs an earlier export of ``folder`` made (parents and their trials)."""
    from mlflow.entities import ViewType

    where = f"tags.`{FOLDER_TAG}` = '{str(folder.resolve()).replace(chr(39), chr(39) * 2)}'"
    for run in client.search_runs([experiment], where, run_view_type=ViewType.ACTIVE_ONLY, max_results=50000):
        client.delete_run(run.info.run_id)


def _findings(summary: dict[str, Any]) -> tuple[dict[str, str], dict[str, float]]:
    """The summary's top-level scalars: every one as a param, the numbers also as metrics
    (``after``/``before`` of tune flattened one level: ``after.best_lr``)."""
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        if key in ("verdict", "rules", "warnings"):
            continue
        if isinstance(value, dict) and key in ("after", "before", "mitigation", "picked", "early_check"):
            flat.update({f"{key}.{k}": v for k, v in value.items() if not isinstance(v, (dict, list))})
        elif not isinstance(value, (dict, list)):
            flat[key] = value
    params = {k: str(v)[:PARAM_LIMIT] for k, v in flat.items() if v is not None}
    params["warnings"] = str(len(summary.get("warnings") or []))
    metrics = {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return params, metrics


def _artifacts(stage: Stage) -> list[Path]:
    folder = stage.folder
    files = [folder / name for name in ("summary.json", "config.yaml", "recommended.yaml")]
    files += sorted((folder / "plots").glob("*.png")) if (folder / "plots").is_dir() else []
    files.append(folder.parent / "report.html")
    return [path for path in files if path.is_file()]


def _trial(client: Any, experiment: str, parent_id: str, stage: Stage, row: Any) -> None:
    trial_id = int(row["trial_id"])
    status = str(row.get("status", ""))
    child = client.create_run(
        experiment,
        run_name=f"{stage.name} trial {trial_id}",
        tags={
            "mlflow.parentRunId": parent_id,
            FOLDER_TAG: str(stage.folder.resolve()),
            "stabsweep.command": stage.name,
            "stabsweep.trial_id": str(trial_id),
            "stabsweep.status": status,
            "stabsweep.reason": str(plain(row.get("reason")) or "")[:PARAM_LIMIT],
        },
    )
    run_id = child.info.run_id
    params = {k: str(v)[:PARAM_LIMIT] for k, v in stage.hparams(row).items()}
    outcome = [(name, value, 0) for name, value in stage.outcome(row).items()]
    series = _series(stage.steps, trial_id, STEP_METRICS) + _series(
        stage.evals, trial_id, [c for c in stage.evals.columns if c.startswith("eval_")]
    )
    _log(client, run_id, params=params, metrics=outcome + series)
    failed = status == TrialStatus.FAILED.value
    client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


def _series(frame: Any, trial_id: int, columns: Any) -> list[tuple[str, float, int]]:
    """``(metric, value, step)`` for each column of one trial's rows; empty cells skipped."""
    if not len(frame):
        return []
    part = frame[frame["trial_id"] == trial_id]
    out = []
    steps = part["step"].astype(int).tolist()
    for column in columns:
        if column not in part:
            continue
        values = part[column]
        if values.dtype == object:
            values = values.map({"True": 1.0, "False": 0.0, True: 1.0, False: 0.0})
        for step, value in zip(steps, values.astype(float).tolist(), strict=True):
            if value == value:
                out.append((column, value, step))
    return out


def _log(client: Any, run_id: str, *, params: dict[str, str], metrics: list[tuple[str, float, int]]) -> None:
    """Params and metrics in batches of MLflow's limit (a call per metric would take minutes)."""
    from mlflow.entities import Metric, Param

    stamp = int(time.time() * 1000)
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    for start in range(0, len(metrics), BATCH):
        chunk = metrics[start : start + BATCH]
        client.log_batch(run_id, metrics=[Metric(k, v, stamp, step) for k, v, step in chunk])
