"""``stabsweep tune``: the choice rule on synthetic findings, the confirm grid, end to end on the
smoke config and on a workload written outside the project (each confirm trial against a plain
PyTorch loop with the mitigation it claims), resume between stages, and the recommended config."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from stabsweep.analysis.lr import LrFindings
from stabsweep.analysis.tune import Mitigated, choose, gains, verdict
from stabsweep.cli import app
from stabsweep.config import load_config
from stabsweep.procedures.tune import confirm_grid

from .conftest import MINIMAL, ROOT

runner = CliRunner()
OUTSIDE = ROOT / "examples" / "outside"


def mitigated(name, best_lr, objective, unstable, aggressive=False, top=10.0):
    findings = LrFindings(best_lr, unstable, 0.0, "best_eval_loss", best_objective=objective)
    return Mitigated(name, findings, 0.9 if aggressive else None, aggressive, top)


def test_choice_takes_the_simplest_within_one_percent_and_as_stable():
    choice = choose(
        {
            "none": mitigated("none", 0.1, 0.108, 0.316),
            "warmup": mitigated("warmup", 0.1, 0.1075, 0.316),  # within 1% of the best, as stable as none
            "clip": mitigated("clip", 0.1, 0.1070, 1.0),
            "both": mitigated("both", 0.316, 0.0907, 1.0),
        }
    )
    assert choice.chosen.name == "both"  # 16% better: worth both fixes
    choice = choose(
        {
            "none": mitigated("none", 0.1, 0.108, 0.316),
            "warmup": mitigated("warmup", 0.1, 0.1075, 0.316),
            "clip": mitigated("clip", 0.1, 0.1072, 1.0),
            "both": mitigated("both", 0.1, 0.1070, 1.0),
        }
    )
    assert choice.chosen.name == "none"  # as good within 1%: the simplest, and the wider range is named
    assert "Clip does widen the stable range (unstable at 1, was 0.316)" in verdict(choice, 30, 2.0)
    choice = choose(
        {
            "none": mitigated("none", 0.1, 0.110, 0.316),
            "warmup": mitigated("warmup", 0.1, 0.1075, 0.1),  # better loss, narrower range than none
            "clip": mitigated("clip", 0.1, 0.1076, 1.0),
        }
    )
    assert choice.chosen.name == "clip"  # warmup is within 1% of the bar but gives up none's range
    assert gains(choice) == (round(1.0 / 0.316, 4), round((0.110 - 0.1076) / 0.110, 4))


def test_choice_prefers_no_fix_when_nothing_is_better():
    choice = choose(
        {
            "none": mitigated("none", 0.1, 0.108, 0.316),
            "warmup": mitigated("warmup", 0.1, 0.1085, 0.316),
            "clip": mitigated("clip", 0.1, 0.1079, 0.316),
        }
    )
    assert choice.chosen.name == "none"
    text = verdict(choice, 30, 2.0)
    assert text.startswith("Neither warmup nor clipping helped") and "0.108" in text


def test_clipping_that_bites_on_most_steps_is_never_chosen():
    choice = choose(
        {
            "none": mitigated("none", 0.1, 0.108, 0.316),
            "clip": mitigated("clip", 0.316, 0.05, None, aggressive=True),
        }
    )
    assert choice.chosen.name == "none" and choice.candidates == ["none"]


def test_a_range_past_the_grid_is_said_plainly():
    choice = choose({"none": mitigated("none", 0.1, 0.108, 0.316), "warmup": mitigated("warmup", 0.316, 0.09, None)})
    assert choice.chosen.name == "warmup"
    assert gains(choice)[0] == ">grid"
    text = verdict(choice, 30, None)
    assert text.startswith("A warmup of 30 steps keeps training stable across the whole grid (without it: unstable")
    assert "moves from 0.1 to 0.316" in text


def test_nothing_trained_under_any_mitigation_is_a_verdict():
    choice = choose({"none": mitigated("none", None, None, None), "clip": mitigated("clip", None, None, None)})
    assert choice.chosen is None and gains(choice) == (None, None)
    assert "lower rate" in verdict(choice, None, None)


def test_confirm_grid_extends_the_lr_grid_upward_at_its_spacing():
    grid = confirm_grid([0.001, 0.01, 0.1, 1.0], best_lr=0.1, unstable=1.0, multiplier=10)
    assert grid == [0.01, 0.1, 1.0, 10.0]
    grid = confirm_grid([0.01, 0.0316, 0.1], best_lr=0.0316, unstable=0.1, multiplier=30)
    assert grid[0] == 0.01 and grid[-1] >= 3.0 * 0.999
    assert np.allclose(np.diff(np.log(grid[2:])), math.log(0.1 / 0.0316), rtol=1e-3)


# -- end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    result = runner.invoke(app, ["tune", str(ROOT / "configs" / "smoke.yaml"), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout[result.stdout.index("{") :])["command"] == "tune"
    return out


def test_smoke_end_to_end(smoke_run):
    out = smoke_run
    summary = json.loads((out / "tune" / "summary.json").read_text())
    for stage in ("lr", "warmup", "clip", "tune"):  # each stage where its own command writes it
        assert (out / stage / "summary.json").is_file()
    for name in ("config.yaml", "trials.csv", "steps.csv", "evals.csv", "plots/frontier.png", "recommended.yaml"):
        assert (out / "tune" / name).is_file(), name
    assert set(summary) >= {
        "before",
        "after",
        "mitigation",
        "stable_range_gain",
        "objective_gain",
        "mitigations",
        "recommended_config",
        "verdict",
        "next_command",
    }
    assert set(summary["before"]) == {"mitigation", "best_lr", "unstable_base_lr", "best_objective"}
    trials = pd.read_csv(out / "tune" / "trials.csv")
    assert set(trials["mitigation"]) == {m["mitigation"] for m in summary["mitigations"]}
    assert summary["grid"][-1] >= summary["multiplier"] * summary["before"]["unstable_base_lr"] * 0.999
    assert trials.groupby("mitigation")["lr"].apply(sorted).map(lambda r: r == summary["grid"]).all()


def test_nothing_to_mitigate_is_a_verdict_with_exit_0(tmp_path, write_config):
    config = write_config(MINIMAL.replace("[0.05, 50.0]", "[0.03, 0.1]"))
    result = runner.invoke(app, ["tune", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "tune" / "summary.json").read_text())
    assert summary["verdict"].startswith("Nothing to mitigate") and summary["chosen"] is None
    assert not (tmp_path / "run" / "warmup").exists()


OUTSIDE_CONFIG = f"""\
name: outside-tune
seed: 3
device: cpu
workload:
  factory: "{OUTSIDE / "workload.py"}:build"
  args: {{width: 32}}
  batch_size: 32
train:
  steps: 60
  eval_every: 20
  optimizer: {{name: momentum}}
lr_sweep:
  lrs: [0.01, 0.1, 1.0]
warmup_sweep:
  warmup_steps: [2, 4]
"""


@pytest.fixture(scope="module")
def outside_run(tmp_path_factory):
    """One tune of the regression model in examples/outside (dropout, LayerNorm, DataLoaders,
    loss(model, batch)) with SGD + momentum: its top rate diverges."""
    folder = tmp_path_factory.mktemp("outside")
    config = folder / "tune.yaml"
    config.write_text(OUTSIDE_CONFIG)
    result = runner.invoke(app, ["tune", str(config), "--out", str(folder / "run")])
    assert result.exit_code == 0, result.output
    return config, folder / "run"


def plain_losses(lr: float, steps: int, warmup: int, clip: float | None) -> tuple[np.ndarray, np.ndarray]:
    """What a user writes by hand: SGD with momentum 0.9, a LinearLR warmup from lr/warmup, and
    clip_grad_norm_ at the threshold. The per-step loss and rate."""
    sys.path.insert(0, str(OUTSIDE))
    from workload import build

    workload = build(3, 32, 32)
    model = workload.model
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    batches = (batch for _ in range(steps) for batch in workload.train_data)
    losses, rates = [], []
    for t in range(steps):
        rate = lr * (t + 1) / warmup if t < warmup else lr
        for group in optimizer.param_groups:
            group["lr"] = rate
        loss = workload.loss(model, next(batches))
        optimizer.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        losses.append(loss.item())
        rates.append(rate)
        if not math.isfinite(losses[-1]):
            break
    return np.array(losses), np.array(rates)


def test_confirm_trials_carry_the_mitigation_they_claim(outside_run):
    _, run = outside_run
    summary = json.loads((run / "tune" / "summary.json").read_text())
    trials = pd.read_csv(run / "tune" / "trials.csv")
    steps = pd.read_csv(run / "tune" / "steps.csv")
    picked = summary["picked"]
    assert picked["warmup_steps"] and picked["clip_threshold"], summary["warnings"]
    assert {"none", "warmup", "clip", "skip", "both"} == set(trials["mitigation"])  # skip: not before step 64
    told_apart = 0
    for row in trials.itertuples():
        warm = picked["warmup_steps"] if row.mitigation in ("warmup", "both") else 0
        clip = picked["clip_threshold"] if row.mitigation in ("clip", "both") else None
        assert row.warmup_steps == warm and (
            pd.isna(row.clip_threshold) if clip is None else row.clip_threshold == clip
        )
        mine = steps[steps["trial_id"] == row.trial_id]
        want_losses, want_rates = plain_losses(row.lr, 12, warm, clip)
        n = min(12, len(mine), len(want_losses))  # float differences grow with the steps at the top rates
        got = mine["train_loss"].to_numpy()[:n]
        assert np.allclose(mine["lr"].to_numpy()[:n], want_rates[:n], rtol=1e-6), row
        np.testing.assert_allclose(got, want_losses[:n], rtol=1e-3, atol=1e-6)
        if clip is not None:  # the logged norm is the unclipped one: clipping shows in `clipped`
            assert (mine["clipped"] == (mine["grad_norm"] > clip)).all()
            if mine["clipped"].to_numpy()[: n - 2].any():  # and a plain loop without it is told apart
                unclipped, _ = plain_losses(row.lr, n, warm, None)
                told_apart += len(unclipped) < n or not np.allclose(got, unclipped[:n], rtol=1e-3)
    assert told_apart
    # the plain loop's verdict on the top rate without a fix: it blows up, as the sweep says
    plain, _ = plain_losses(1.0, 60, 0, None)
    top = trials[(trials["lr"] == 1.0) & (trials["mitigation"] == "none")].iloc[0]
    assert (not np.isfinite(plain).all() or plain.max() > 4 * plain[0]) == (top["status"] == "diverged")


def test_recommended_config_is_valid_input_to_lr(outside_run, tmp_path):
    _, run = outside_run
    summary = json.loads((run / "tune" / "summary.json").read_text())
    path = Path(summary["recommended_config"])
    text = path.read_text()
    assert text.startswith("# ") and "train.warmup_steps" in text and "lr_sweep.lrs" in text
    config = load_config(path)
    assert config.name == "outside-tune-tuned"
    assert config.train.warmup_steps == (summary["mitigation"]["warmup_steps"] or 0)
    clip = summary["mitigation"]["clip_threshold"]
    assert (
        (config.train.clip is None) if clip is None else math.isclose(config.train.clip.threshold, clip, rel_tol=1e-5)
    )
    best = summary["after"]["best_lr"]
    assert config.lr_sweep.lrs.min < best < config.lr_sweep.lrs.max
    result = runner.invoke(
        app, ["lr", str(path), "--out", str(tmp_path / "again"), "--set", "lr_sweep.lrs.num=2", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    trials = pd.read_csv(tmp_path / "again" / "lr" / "trials.csv")
    assert (trials["steps_run"] <= 60 + config.train.warmup_steps).all()


def test_resume_after_an_interrupt_between_stages(tmp_path, smoke_config, monkeypatch):
    from stabsweep.procedures import tune

    out = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(tune, "plan", interrupted)  # Ctrl-C as the confirm stage starts
        result = runner.invoke(app, ["tune", str(smoke_config), "--out", str(out)])
    assert result.exit_code == 130, result.output
    before = {stage: (out / stage / "trials.csv").read_bytes() for stage in ("lr", "warmup", "clip")}
    assert not (out / "tune" / "summary.json").exists()
    result = runner.invoke(app, ["tune", str(smoke_config), "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    finished = before_confirm = result.output[: result.output.index("── confirm")]
    for stage in ("lr", "warmup", "clip"):
        rows = len(pd.read_csv(out / stage / "trials.csv"))
        assert f"── {stage}" in finished and f": {rows} trials, {rows} finished before" in finished
        assert (out / stage / "trials.csv").read_bytes() == before[stage]  # read back, not retrained
    assert not re.search(r"^  lr=", before_confirm, flags=re.M)  # no stage trained a trial
    assert json.loads((out / "tune" / "summary.json").read_text())["verdict"]

    # resumed with more seeds, each stage trains only the new ones; a changed config is refused
    result = runner.invoke(app, ["tune", str(smoke_config), "--out", str(out), "--resume", "--seeds", "2"])
    assert result.exit_code == 0, result.output
    lr_trials = pd.read_csv(out / "lr" / "trials.csv")
    assert sorted(lr_trials["seed"].unique()) == [0, 1]
    moved = json.loads((out / "lr" / "summary.json").read_text())["unstable_base_lr"] != 1.0
    if moved:  # seed 1 moved the unstable rate: the warmup probes were planned at another rate
        assert "warmup: trial 0 ran with lr=10 but is now planned with lr=" in result.output
        assert "the stage starts over" in result.output
    assert json.loads((out / "tune" / "summary.json").read_text())["stability"]["setup"]["seeds"] == 2
    changed = runner.invoke(app, ["tune", str(smoke_config), "--out", str(out), "--resume", "--set", "train.steps=50"])
    assert changed.exit_code == 2 and "train.steps differs" in changed.output


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_kill_9_during_tune_resumes_with_nothing_lost(tmp_path, smoke_config, smoke_run):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "stabsweep", "tune", str(smoke_config), "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env)
    while process.poll() is None and not (out / "clip" / "summary.json").exists():
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # between the clip and confirm stages, or during the confirm
    process.wait()
    assert (out / "lr" / "summary.json").is_file() and (out / "clip" / "summary.json").is_file()
    lr_trials = (out / "lr" / "trials.csv").read_bytes()
    result = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert (out / "lr" / "trials.csv").read_bytes() == lr_trials
    got = pd.read_csv(out / "tune" / "trials.csv").sort_values("trial_id")
    want = pd.read_csv(smoke_run / "tune" / "trials.csv").sort_values("trial_id")  # the same tune, never killed
    columns = ["trial_id", "lr", "mitigation", "status", "best_eval_loss", "final_train_loss"]
    pd.testing.assert_frame_equal(
        got[columns].reset_index(drop=True), want[columns].reset_index(drop=True), check_exact=False, rtol=1e-5
    )


def test_tune_is_gated_on_its_chosen_mitigation(smoke_run, tmp_path):
    baseline = tmp_path / "baseline.json"
    baseline.write_text((smoke_run / "tune" / "summary.json").read_text())
    args = ["tune", str(ROOT / "configs" / "smoke.yaml"), "--out", str(smoke_run), "--resume", "--baseline"]
    result = runner.invoke(app, [*args, str(baseline)])
    assert result.exit_code == 0, result.output
    assert "stability gate against" in result.output
    summary = json.loads((smoke_run / "tune" / "summary.json").read_text())
    assert summary["gate"]["passed"] and summary["stability"]["setup"]["mitigation"] == summary["chosen"]
