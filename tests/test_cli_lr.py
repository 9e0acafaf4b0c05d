"""``stabsweep lr`` end to end, through typer's CliRunner and as a real process."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from stabsweep.cli import app

from .conftest import needs_ray
from .sweep_files import assert_same_sweep, sweep_files

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow
def test_smoke_sweep_writes_every_file(smoke_config, tmp_path):
    result = invoke("lr", smoke_config, "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    folder = tmp_path / "lr"
    for name in (
        "config.yaml",
        "trials.csv",
        "steps.csv",
        "evals.csv",
        "summary.json",
        "plots/lr_sweep.png",
        "plots/loss_curves.png",
        "plots/grad_norms.png",
    ):
        assert (folder / name).stat().st_size > 0, name
    assert json.loads((folder / "summary.json").read_text()) == summary
    for key in ("best_lr", "unstable_base_lr", "verdict", "infeasible_fraction", "warnings", "next_command"):
        assert key in summary

    trials = pd.read_csv(folder / "trials.csv")
    steps = pd.read_csv(folder / "steps.csv")
    evals = pd.read_csv(folder / "evals.csv")
    assert list(trials["lr"]) == [0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
    assert set(steps.columns) >= {"trial_id", "step", "lr", "train_loss", "grad_norm", "clipped"}
    assert set(evals.columns) >= {"trial_id", "step", "eval_loss", "eval_accuracy"}
    # every trial with a non-finite loss is marked diverged, stopped at that step
    for tid, part in steps.groupby("trial_id"):
        row = trials.set_index("trial_id").loc[tid]
        assert row["steps_run"] == len(part)
        if not np.isfinite(part["train_loss"]).all():
            assert row["status"] == "diverged"
            assert row["diverged_step"] == part["step"].iloc[-1]
    assert trials.set_index("lr").loc[10.0, "status"] == "diverged"
    # the findings follow the rules applied to trials.csv
    feasible = trials[trials["status"].isin(["ok", "unstable"])]
    assert summary["best_lr"] == feasible.loc[feasible["best_eval_loss"].idxmin(), "lr"]
    failing = ["diverged", "unstable", "learned_nothing"]
    above = trials[(trials["lr"] > summary["best_lr"]) & trials["status"].isin(failing)]
    assert summary["unstable_base_lr"] == above["lr"].min()
    assert summary["unstable_kind"] == above.sort_values("lr")["status"].iloc[0]
    assert summary["next_command"] == f"stabsweep warmup --from {tmp_path}"


@pytest.mark.slow
def test_human_output_has_table_verdict_and_next_command(smoke_config, tmp_path):
    result = invoke("lr", smoke_config, "--out", tmp_path, "--early-check")
    assert result.exit_code == 0
    assert "learning-rate sweep" in result.output and "lr*" in result.output
    assert "Verdict:" in result.output and "Next: stabsweep warmup --from" in result.output
    assert "Early check at lr=" in result.output
    summary = json.loads((tmp_path / "lr" / "summary.json").read_text())
    early = summary["early_check"]
    assert early["lr"] == pytest.approx(2 * summary["best_lr"])
    evals = pd.read_csv(tmp_path / "lr" / "evals.csv")
    assert len(evals[evals["trial_id"] == early["trial_id"]]) == early["steps"] + 1  # every step, and step 0
    assert (tmp_path / "lr" / "plots" / "early_check.png").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "train.stepz=3"], "--set train.stepz: unknown key (did you mean 'steps'?)"),
        (
            ["--set", "workload.factory=nowhere.py:build", "--set", "workload.name=null"],
            "smoke.yaml: workload.factory: file not found",
        ),
        (["--device", "cuda:7"], "device"),
    ],
)
def test_bad_input_exits_2_with_one_message(smoke_config, tmp_path, args, expected):
    result = runner.invoke(app, ["lr", str(smoke_config), "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert expected in result.output
    assert "Traceback" not in result.output


def test_missing_config_exits_2(tmp_path):
    result = runner.invoke(app, ["lr", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "config file not found" in result.output


@pytest.mark.slow
def test_existing_results_need_resume_or_force(smoke_config, tmp_path):
    assert invoke("lr", smoke_config, "--out", tmp_path, "-q").exit_code == 0
    again = runner.invoke(app, ["lr", str(smoke_config), "--out", str(tmp_path)])
    assert again.exit_code == 2 and "--resume" in again.output
    changed = runner.invoke(
        app, ["lr", str(smoke_config), "--out", str(tmp_path), "--resume", "--set", "train.steps=61"]
    )
    assert changed.exit_code == 2 and "train.steps differs" in changed.output
    assert invoke("lr", smoke_config, "--out", tmp_path, "--force", "-q").exit_code == 0


class Killed(BaseException):
    """Raised mid-write: the process is gone, as after kill -9 (nothing is cleaned up)."""


@pytest.mark.slow
def test_a_kill_before_the_first_trials_row_leaves_a_run_to_resume_not_rows_to_append_to(
    smoke_config, tmp_path, monkeypatch
):
    """The first trial's steps.csv rows are written, its trials.csv row is not: the folder
    has no trials.csv, yet it is not empty. A plain rerun would append a second copy of
    those rows; it is refused, and --resume drops them before it runs the trial again."""
    from stabsweep.results import lock
    from stabsweep.results.store import STEPS, ResultsStore

    reference = tmp_path / "reference"
    assert invoke("lr", smoke_config, "--out", reference, "-q").exit_code == 0
    real = ResultsStore._append

    def killed_after_the_steps(store, name, frame):
        real(store, name, frame)
        if name == STEPS:
            raise Killed

    monkeypatch.setattr(ResultsStore, "_append", killed_after_the_steps)
    with pytest.raises(Killed):
        runner.invoke(app, ["lr", str(smoke_config), "--out", str(tmp_path / "killed"), "-q"])
    monkeypatch.undo()
    lock.release_all()  # the kernel's part, when a killed process ends
    folder = tmp_path / "killed" / "lr"
    assert (folder / "steps.csv").exists() and not (folder / "trials.csv").exists()

    again = runner.invoke(app, ["lr", str(smoke_config), "--out", str(tmp_path / "killed")])
    assert again.exit_code == 2 and "steps.csv rows without their trials.csv row" in again.output
    assert "--resume" in again.output
    resumed = invoke("lr", smoke_config, "--out", tmp_path / "killed", "--resume", "-q")
    assert resumed.exit_code == 0, resumed.output
    assert_same_sweep(sweep_files(folder), sweep_files(reference / "lr"))


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "process", pytest.param("ray", marks=needs_ray)])
def test_interrupted_sweep_resumes_to_the_same_files(executor, smoke_config, tmp_path, monkeypatch):
    from stabsweep.results.store import ResultsStore

    reference = tmp_path / "reference"
    assert invoke("lr", smoke_config, "--out", reference, "-q").exit_code == 0

    real, calls = ResultsStore.write, []

    def interrupted(store, result):
        calls.append(result.spec.trial_id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(store, result)

    monkeypatch.setattr(ResultsStore, "write", interrupted)
    broken = tmp_path / "broken"
    result = runner.invoke(app, ["lr", str(smoke_config), "--out", str(broken), "--executor", executor])
    assert result.exit_code == 130 and "--resume" in result.output
    assert len(pd.read_csv(broken / "lr" / "trials.csv")) == 2

    monkeypatch.setattr(ResultsStore, "write", real)
    resumed = invoke("lr", smoke_config, "--out", broken, "--resume", "-q", "--executor", executor)
    assert resumed.exit_code == 0, resumed.output
    assert_same_sweep(sweep_files(broken / "lr"), sweep_files(reference / "lr"))


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, write_config):
    factory = tmp_path / "flaky.py"
    factory.write_text(
        "import torch, stabsweep\n"
        "from stabsweep.workloads.mlp import build as mlp\n"
        "def build(seed, batch_size=32):\n"
        "    w = mlp(seed, batch_size=batch_size, hidden=16, depth=1)\n"
        "    def loss(model, batch):\n"
        "        if model[0].weight.abs().max() > 3: raise RuntimeError('weights too large for my kernel')\n"
        "        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])\n"
        "    return stabsweep.Workload(model=w.model, train_data=w.train_data, eval_data=w.eval_data, loss=loss)\n"
    )
    config = write_config(
        "# stabsweep lr config.yaml\nname: flaky\nworkload: {factory: 'flaky.py:build'}\n"
        "train: {steps: 40, eval_every: 20, optimizer: {name: sgd}}\nlr_sweep: {lrs: [0.01, 0.1, 100.0]}\n"
    )
    result = invoke("lr", config, "--out", tmp_path / "out", "--json")
    assert result.exit_code == 0
    trials = pd.read_csv(tmp_path / "out" / "lr" / "trials.csv").set_index("lr")
    assert trials.loc[100.0, "status"] == "failed"
    assert "weights too large" in trials.loc[100.0, "error"]
    assert trials.loc[0.1, "status"] == "ok"
    assert any("failed" in w for w in json.loads(result.stdout)["warnings"])


@pytest.mark.slow
def test_the_early_check_is_the_start_of_the_real_schedule(smoke_config, tmp_path):
    """A one-cycle schedule over 60 steps: the early check's 40 steps are the first 40 of it, at 2 × lr*."""
    from stabsweep.config import load_config
    from stabsweep.training.common import lr_schedule

    schedule = "train.schedule={name: one_cycle, pct_start: 0.5}"
    result = invoke("lr", smoke_config, "--out", tmp_path, "--early-check", "--json", "--set", schedule)
    summary = json.loads(result.stdout)
    early = summary["early_check"]
    assert early["steps"] == 40 and early["of_steps"] == 60
    steps = pd.read_csv(tmp_path / "lr" / "steps.csv")
    taken = steps[steps["trial_id"] == early["trial_id"]]["lr"].to_numpy()
    config = load_config(smoke_config, {"train.schedule": {"name": "one_cycle", "pct_start": 0.5}})
    from stabsweep.procedures.lr import plan

    full = lr_schedule(plan(config, [early["lr"]])[0])  # the whole run at 2 × lr*
    np.testing.assert_allclose(taken, full[:40], rtol=1e-6)
    assert taken.argmax() == 29  # the peak at half of the 60-step run, not of the 40 steps


def test_only_an_early_instability_counts_in_the_early_check():
    from stabsweep.analysis.lr import LrFindings
    from stabsweep.config.schema import ScheduleConfig
    from stabsweep.procedures.lr import early_summary
    from stabsweep.records import TrialSpec

    spec = TrialSpec(9, 0.2, 0, 500, 1, ScheduleConfig(), run_steps=1000)
    found = LrFindings(0.1, 0.3, 0.0, "best_eval_loss")
    for status, instability, counts in [
        ("unstable", "mid-training", False),
        ("unstable", "early", True),
        ("diverged", "early", True),
        ("learned_nothing", None, False),
    ]:
        trials = pd.DataFrame([{"trial_id": 9, "status": status, "instability": instability, "reason": "r"}])
        out = early_summary(trials, spec, found)
        assert out["early_instability"] is counts, status
        assert ("lr* 0.1 itself is at risk" in out["verdict"]) is counts


@pytest.mark.slow
def test_two_runs_of_one_sweep_write_identical_files(smoke_config, tmp_path):
    """Same machine, same command: the same bytes (trials.csv but for its wall-clock column)."""
    for name in ("first", "second"):
        assert invoke("lr", smoke_config, "--out", tmp_path / name, "-q").exit_code == 0
    first, second = tmp_path / "first" / "lr", tmp_path / "second" / "lr"
    for name in ("steps.csv", "evals.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    trials = [pd.read_csv(folder / "trials.csv").drop(columns="wall_seconds") for folder in (first, second)]
    assert trials[0].to_csv(index=False) == trials[1].to_csv(index=False)
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in (first, second)]
    for summary in summaries:
        summary.pop("next_command")  # names the folder
    assert summaries[0] == summaries[1]


def test_resume_compares_every_setting_a_finished_trial_ran_with(tmp_path, write_config):
    """Not only the rate: a clip threshold or mitigation that moved makes the finished trial stale."""
    from stabsweep.config import load_config
    from stabsweep.records import TrialSpec
    from stabsweep.results.store import ResultsStore

    config = load_config(write_config("name: t\nworkload: {name: mlp}\n"))
    store = ResultsStore.open(tmp_path / "x", config)
    (store.folder / "trials.csv").write_text(
        "trial_id,lr,phase,clip_threshold,seed,status\n0,0.1,clip,2.5,0,ok\n1,0.1,baseline,,0,ok\n"
    )
    store.drop_unfinished()
    spec = TrialSpec(0, 0.1, 0, 10, 5, config.train.schedule, columns={"phase": "clip", "clip_threshold": 2.5})
    assert store.mismatch(spec) is None
    moved = TrialSpec(0, 0.1, 0, 10, 5, config.train.schedule, columns={"phase": "clip", "clip_threshold": 1.9})
    assert store.mismatch(moved) == "trial 0 ran with clip_threshold=2.5 but is now planned with clip_threshold=1.9"
    none = TrialSpec(1, 0.1, 0, 10, 5, config.train.schedule, columns={"phase": "baseline", "clip_threshold": None})
    assert store.mismatch(none) is None
    assert store.mismatch(TrialSpec(2, 5.0, 0, 10, 5, config.train.schedule)) is None  # not run yet
