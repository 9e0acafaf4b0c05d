"""Export to the trackers (docs/contract.md, "Export"), read back with the trackers' own readers:
TensorBoard's ``EventAccumulator`` and MLflow's ``search_runs`` on a local store."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest
from typer.testing import CliRunner

import stabsweep
from stabsweep.cli import app
from stabsweep.results.store import read_table

from .conftest import CONFIGS

runner = CliRunner()
needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="no tensorboard")
needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="no mlflow")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The smoke config through tune: lr, warmup, clip and the confirm sweeps, in one run folder."""
    folder = tmp_path_factory.mktemp("tuned")
    result = runner.invoke(app, ["tune", str(CONFIGS / "smoke.yaml"), "--out", str(folder), "--quiet"])
    assert result.exit_code == 0, result.output
    return folder


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return accumulator


@needs_tensorboard
@pytest.mark.slow
def test_tensorboard_has_every_trial_its_steps_and_the_hparams_sessions(tuned):
    from tensorboard.plugins.hparams import plugin_data_pb2

    result = runner.invoke(app, ["export", str(tuned), "--to", "tensorboard"])
    assert result.exit_code == 0, result.output
    assert "View: tensorboard --logdir" in result.output
    for stage in ("lr", "warmup", "clip", "tune"):
        trials = read_table(tuned / stage / "trials.csv")
        steps = read_table(tuned / stage / "steps.csv")
        runs = sorted(p.name for p in (tuned / "tensorboard" / stage).iterdir())
        assert runs == [f"trial-{t:03d}" for t in trials["trial_id"]], stage
        for _, row in trials.iterrows():
            acc = events(tuned / "tensorboard" / stage / f"trial-{int(row['trial_id']):03d}")
            own = steps[steps["trial_id"] == row["trial_id"]]
            loss = acc.Scalars("train_loss")
            assert [e.step for e in loss] == list(own["step"])
            finite = own["train_loss"].notna()
            assert [e.value for e in loss if e.value == e.value] == pytest.approx(
                list(own["train_loss"][finite].astype(float)), rel=1e-6, nan_ok=True
            )
            assert {"grad_norm", "lr", "trial/status"} <= set(acc.Tags()["scalars"])
            assert acc.Scalars("trial/status")[0].value == stabsweep_status_code(row["status"])
            content = acc.PluginTagToContent("hparams")
            start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
            hparams = start.session_start_info.hparams
            assert hparams["lr"].number_value == pytest.approx(row["lr"])
            assert hparams["command"].string_value == stage
            experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
            assert "trial/best_eval_loss" in {m.name.tag for m in experiment.metric_infos}
    tune_run = events(tuned / "tensorboard" / "tune" / "trial-000")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        tune_run.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    )
    assert start.session_start_info.hparams["mitigation"].string_value in {"none", "warmup", "clip", "skip", "both"}


def stabsweep_status_code(status):
    from stabsweep.report.trackers import STATUS_CODES

    return STATUS_CODES[status]


@needs_mlflow
@pytest.mark.slow
def test_mlflow_has_a_parent_run_per_command_and_a_nested_run_per_trial(tuned, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    summary = stabsweep.export(tuned, "mlflow")
    uri = f"sqlite:///{(tuned / 'mlflow.db').resolve()}"
    assert summary["where"] == uri and summary["stages"] == ["lr", "warmup", "clip", "tune"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["smoke"])
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert sorted(parents["tags.mlflow.runName"]) == ["clip", "lr", "tune", "warmup"]
    lr_parent = parents[parents["tags.mlflow.runName"] == "lr"].iloc[0]
    lr_summary = stabsweep.open_run(tuned / "lr").summary
    assert float(lr_parent["params.best_lr"]) == lr_summary["best_lr"]
    assert lr_parent["metrics.unstable_base_lr"] == lr_summary["unstable_base_lr"]
    assert lr_parent["tags.mlflow.note.content"] == lr_summary["verdict"]
    artifacts = {a.path for a in client.list_artifacts(lr_parent["run_id"])}
    assert {"summary.json", "config.yaml", "plots"} <= artifacts
    assert {a.path for a in client.list_artifacts(lr_parent["run_id"], "plots")} >= {"plots/lr_sweep.png"}

    children = runs[runs["tags.mlflow.parentRunId"] == lr_parent["run_id"]]
    trials = read_table(tuned / "lr" / "trials.csv")
    steps = read_table(tuned / "lr" / "steps.csv")
    assert len(children) == len(trials)
    for _, child in children.iterrows():
        trial_id = int(child["tags.stabsweep.trial_id"])
        row = trials[trials["trial_id"] == trial_id].iloc[0]
        assert float(child["params.lr"]) == row["lr"] and child["tags.stabsweep.status"] == row["status"]
        history = client.get_metric_history(child["run_id"], "train_loss")
        own = steps[steps["trial_id"] == trial_id]
        assert sorted(m.step for m in history) == list(own["step"])
    # exported again: the earlier runs are replaced, not doubled
    stabsweep.export(tuned / "lr", "mlflow")
    again = mlflow.search_runs(experiment_names=["smoke"])
    assert len(again) == len(runs)


@needs_tensorboard
def test_log_to_exports_what_the_command_wrote(tmp_path):
    result = runner.invoke(
        app,
        [
            "lr",
            str(CONFIGS / "smoke.yaml"),
            "--out",
            str(tmp_path),
            "--set",
            "train.steps=20",
            "--log-to",
            "tensorboard",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Exported lr (6 trials) to tensorboard" in result.output
    assert len(list((tmp_path / "tensorboard" / "lr").iterdir())) == 6


def test_a_missing_tracker_is_exit_2_naming_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    result = runner.invoke(app, ["lr", str(CONFIGS / "smoke.yaml"), "--out", str(tmp_path), "--log-to", "mlflow"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: exporting to mlflow needs its library: pip install 'stabsweep[mlflow]'"
    assert not (tmp_path / "lr").exists()  # said before anything trains
    result = runner.invoke(app, ["lr", str(CONFIGS / "smoke.yaml"), "--out", str(tmp_path), "--log-to", "wandb"])
    assert result.exit_code == 2 and "--log-to wandb: expected one of tensorboard, mlflow" in result.output


def test_export_of_a_folder_without_a_run_is_exit_2(tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path), "--to", "tensorboard"])
    assert result.exit_code == 2, result.output
    assert "no stage of a stabsweep run here" in result.output


def test_outcome_and_settings_of_a_trial_are_plain_numbers_and_values():
    from stabsweep.report.trackers import Stage

    trials = pd.DataFrame(
        {
            "trial_id": [0],
            "lr": [0.1],
            "clip_threshold": [float("nan")],
            "mitigation": ["none"],
            "status": ["diverged"],
            "best_eval_loss": [float("nan")],
            "diverged_step": [12.0],
        }
    )
    stage = Stage("tune", None, {}, trials, pd.DataFrame(), pd.DataFrame())
    row = trials.iloc[0]
    assert stage.settings == ["lr", "clip_threshold", "mitigation"]
    assert stage.hparams(row) == {"lr": 0.1, "mitigation": "none"}  # unclipped: no threshold
    assert stage.outcome(row) == {"status": 2.0, "diverged_step": 12.0}
