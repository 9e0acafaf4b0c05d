"""Verdicts that hold on the kinds of fault the field cases come from, beyond the handed inputs:
a data spike at one step, an error inside stabsweep against one in the user's code, what
``--quiet`` still says, and a printed next command that works from anywhere."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stabsweep.analysis.rules import judge
from stabsweep.analysis.tune import Mitigated, choose, verdict
from stabsweep.cli import app
from stabsweep.config.schema import DetectConfig
from stabsweep.records import TrialStatus

from .conftest import ROOT
from .test_tune import mitigated

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


OUTLIER = """\
name: outlier
device: cpu
workload: {factory: "tests.planted:outlier_batch"}
train: {steps: 40, eval_every: 20, optimizer: {name: momentum}}
lr_sweep: {lrs: [0.00001, 0.0001, 0.001, 0.01, 0.1]}
"""


@pytest.mark.slow
def test_a_batch_that_spikes_at_every_rate_is_the_datas_fault_not_a_rate_edge(write_config, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # tests.planted is a module path, resolved from the folder stabsweep starts in
    result = invoke("lr", write_config(OUTLIER), "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "lr" / "summary.json").read_text())
    found = summary["rate_independent"]
    assert found["kind"] == "same_step" and found["step"] == 6
    assert (found["epoch"], found["batch"]) == (0, 5)  # planted at batch 5 of every epoch
    assert found["rates"][0] == 1e-5 and found["rates"][-1] / found["rates"][0] >= 100
    assert "batch 5 of epoch 0" in summary["verdict"] and "not a learning-rate edge" in summary["verdict"]
    assert summary["next_command"].startswith("stabsweep doctor")
    assert not any("grid is too high" in w for w in summary["warnings"])
    assert "warmup" not in summary["verdict"]


@pytest.mark.slow
def test_tune_does_not_mitigate_a_fault_of_the_data(write_config, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = invoke("tune", write_config(OUTLIER), "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "tune" / "summary.json").read_text())
    assert summary["verdict"].startswith("Not tuned: Every rate from 1e-05")
    assert summary["next_command"].startswith("stabsweep doctor")
    assert not (tmp_path / "run" / "warmup").exists()  # no warmup stage for a data fault


def test_one_batch_above_the_bar_that_falls_back_is_reported_as_a_spike():
    losses = np.linspace(2.3, 0.3, 200)
    losses[50] = 30.0
    found = judge(losses, DetectConfig())
    assert found.status is not TrialStatus.DIVERGED and found.spike_step == 51
    assert "one batch spiked at step 51" in found.reason


def test_a_bug_in_stabsweep_is_exit_1_with_its_traceback(write_config, tmp_path, monkeypatch):
    from stabsweep.training.vectorized import TrialBatch

    def broken_step(self, lrs, skip=None):
        raise AttributeError("'TrialBatch' object has no attribute 'momentum_rows'")

    monkeypatch.setattr(TrialBatch, "_step", broken_step)
    config = write_config(
        "name: t\nworkload: {name: mlp, args: {hidden: 16, depth: 1}, batch_size: 32}\n"
        "train: {steps: 10, eval_every: 5}\nlr_sweep: {lrs: [0.01, 0.1]}\n"
    )
    result = invoke("lr", config, "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert "internal error (a bug in stabsweep" in result.output and "momentum_rows" in result.output
    assert "Traceback" in result.output and "Nothing trained" not in result.output


def test_quiet_still_says_what_failed(write_config, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = write_config(
        'name: t\nworkload: {factory: "tests.planted:crashes_in_eval_mode"}\n'
        "train: {steps: 10, eval_every: 5}\nlr_sweep: {lrs: [0.01, 0.1]}\n"
    )
    result = invoke("lr", config, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 3
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lr: Nothing trained")
    assert "my model's eval path is broken" in lines[0]


@pytest.mark.slow
def test_the_printed_next_commands_run_from_another_folder(tmp_path, monkeypatch):
    """``stabsweep lr proj/sweep.yaml`` from the folder above the project, then the printed
    ``warmup --from`` and ``clip-report --sweep`` from yet another folder: the saved config
    keeps naming the factory file beside the user's config."""
    shutil.copytree(ROOT / "tests" / "field_cases" / "01-lrfind-suggests-unstable", tmp_path / "proj")
    monkeypatch.chdir(tmp_path)
    short = ["--set", "train.steps=150", "--set", "lr_sweep.lrs=[0.03, 0.1, 1.0]"]
    short += ["--set", "warmup_sweep.warmup_steps=[3]", "--set", "clip_sweep.percentiles=[90]"]
    result = invoke("lr", "proj/sweep.yaml", "--out", "proj/runs/first", *short)
    assert result.exit_code == 0, result.output
    summary = json.loads(Path("proj/runs/first/lr/summary.json").read_text())
    assert summary["next_command"] == "stabsweep warmup --from proj/runs/first"
    saved = (tmp_path / "proj" / "runs" / "first" / "lr" / "config.yaml").read_text()
    assert "factory: ../../../workload.py:build" in saved
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for command in (summary["next_command"], "stabsweep clip-report proj/runs/first --sweep"):
        args = [a.replace("proj/", f"{tmp_path}/proj/") for a in shlex.split(command)[1:]]
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert "file not found" not in result.output


def test_tune_never_takes_a_better_loss_at_the_cost_of_the_stable_range():
    choice = choose(
        {
            "none": mitigated("none", 0.1, 0.110, 0.316),
            "warmup": mitigated("warmup", 0.1, 0.100, 0.1),  # the best loss by 9%, but unstable from 0.1
        }
    )
    assert choice.chosen.name == "none"
    assert choice.trade and "warmup reaches a better objective (0.1" in choice.trade
    text = verdict(choice, 30, None)
    assert "Not chosen: warmup" in text and "never taken at the cost of the stable range" in text
    assert isinstance(choice.chosen, Mitigated)


def test_a_trial_that_never_beat_its_untrained_model_shows_no_best_eval(write_config, tmp_path):
    config = write_config(
        "name: t\nworkload: {name: mlp, args: {hidden: 16, depth: 1}, batch_size: 32}\n"
        "train: {steps: 30, eval_every: 10, optimizer: {name: momentum}}\nlr_sweep: {lrs: [0.05, 50.0]}\n"
    )
    result = invoke("lr", config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    import pandas as pd

    trials = pd.read_csv(tmp_path / "run" / "lr" / "trials.csv").set_index("lr")
    assert trials.loc[50.0, "status"] == "diverged" and trials.loc[50.0, "diverged_step"] < 10
    assert np.isnan(trials.loc[50.0, "best_eval_loss"])  # not the step-0 evaluation of the untrained model
    assert trials.loc[0.05, "best_eval_loss"] > 0
