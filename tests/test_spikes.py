"""Loss spikes (docs/contract.md, "Spikes"): which batch, data or optimizer, and skipping them.

A planted outlier batch spikes at every rate and is the data's; a high rate's spikes are the
optimizer's; the batch of every step is the same in both engines; ``train.skip_spikes``
skips exactly the steps a plain loop with OLMo-core's rule skips.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import stabsweep
from stabsweep.analysis.spikes import attribute, detect
from stabsweep.cli import app

from .conftest import CONFIGS, ROOT

runner = CliRunner()

OUTLIER = """\
name: outlier
device: cpu
workload: {factory: "tests.planted:outlier_batch", args: {scale: 30.0}}
train: {steps: 160, eval_every: 40, optimizer: {name: momentum}}
lr_sweep: {lrs: [0.0001, 0.001, 0.01]}
"""


@pytest.mark.slow
def test_a_planted_outlier_batch_is_the_datas_at_every_rate_named_by_position(write_config, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # tests.planted resolves from the repository root
    result = runner.invoke(app, ["lr", str(write_config(OUTLIER)), "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    spikes = pd.read_csv(tmp_path / "lr" / "spikes.csv")
    data = spikes[spikes["kind"] == "data"]
    assert len(data) and set(data["batch"]) == {5}  # batch 5 of every epoch holds the outliers
    # the lowest rates spike there (the highest, 0.01, fits the batch within a few epochs: no spike)
    assert {0.0001, 0.001} <= set(data["lr"])
    assert (data["step"] - 1 == data["epoch"] * 7 + 5).all()  # 448 samples / 64: 7 batches an epoch
    summary = json.loads((tmp_path / "lr" / "summary.json").read_text())
    assert summary["spikes"]["data"] == len(data)
    first = data.sort_values("step").iloc[0]
    assert f"batch 5 of epochs {int(first['epoch'])}, " in summary["verdict"]  # one sentence for every epoch
    assert "inspect those samples" in summary["verdict"]
    shown = runner.invoke(app, ["spikes", str(tmp_path)])
    assert shown.exit_code == 0 and "batches, by trials hit" in shown.output
    assert (tmp_path / "lr" / "plots" / "spikes.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_high_rates_spikes_are_the_optimizers(tmp_path):
    result = stabsweep.lr(
        CONFIGS / "quickstart.yaml",
        out=tmp_path,
        quiet=True,
        device="cpu",
        lr_sweep={"lrs": [0.01, 0.316]},
        train__steps=400,
    )
    spikes = result.spikes
    high = spikes[spikes["lr"] == 0.316]
    assert len(high) and (high["kind"] == "optimization").all()
    assert not (spikes["kind"] == "data").any()
    assert "of the optimizer's own in trials that failed (at rate 0.316)" in result.verdict


@pytest.mark.slow
def test_one_rate_spiking_at_a_batch_that_is_an_outlier_at_init_is_the_datas(write_config, tmp_path, monkeypatch):
    """With one rate there is no second trial to compare: the batch's loss at initialisation
    (doctor's batch_outliers rule) decides, for a spike in epoch 0."""
    monkeypatch.chdir(ROOT)
    config = OUTLIER.replace("lrs: [0.0001, 0.001, 0.01]", "lrs: [0.001]").replace("steps: 160", "steps: 12")
    config = config.replace("scale: 30.0", "scale: 300.0")  # a loss at init 10× the median batch's or more
    config += "detect: {spike_window: 8}\n"
    result = runner.invoke(app, ["lr", str(write_config(config)), "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    spikes = pd.read_csv(tmp_path / "lr" / "spikes.csv")
    at_five = spikes[(spikes["epoch"] == 0) & (spikes["batch"] == 5)]
    assert len(at_five) == 1 and at_five["kind"].iloc[0] == "data"


def test_attribution_needs_the_lowest_rate_that_reached_the_batch():
    trials = pd.DataFrame({"trial_id": [0, 1, 2], "lr": [0.01, 0.1, 1.0], "seed": [0, 0, 0], "steps_run": [50] * 3})
    spikes = pd.DataFrame(
        {
            "trial_id": [1, 2, 0, 1],
            "lr": [0.1, 1.0, 0.01, 0.1],
            "seed": [0] * 4,
            "epoch": [0] * 4,
            "batch": [7, 7, 9, 9],
            "step": [8, 8, 10, 10],
        }
    )
    # batch 7: two high rates, not the lowest: the optimizer's; batch 9: with the lowest rate: the data's
    assert list(attribute(spikes, trials)) == ["optimization", "optimization", "data", "data"]
    # one rate (a clip sweep: thresholds differ, the rate does not): no evidence of the data
    same_rate = trials.assign(lr=0.3)
    assert set(attribute(spikes.assign(lr=0.3), same_rate)) == {"optimization"}


def test_detection_follows_olmo_cores_rolling_rule():
    steps = pd.DataFrame(
        {"trial_id": 0, "step": range(1, 101), "train_loss": 1.0 + 0.01 * np.sin(np.arange(100)), "grad_norm": 1.0}
    )
    steps.loc[79, "train_loss"] = 2.0  # step 80
    steps.loc[9, "train_loss"] = 5.0  # step 10: before the window is half full, not judged
    trials = pd.DataFrame({"trial_id": [0], "lr": [0.1], "seed": [0], "steps_run": [100]})
    found = detect(steps, trials, sigma=6, window=32)
    assert list(found["step"]) == [80] and found["recovered_step"].iloc[0] == 81


def test_every_step_names_the_same_batch_in_both_engines(tmp_path):
    for engine in ("vectorized", "sequential"):
        done = runner.invoke(
            app,
            [
                "lr",
                str(CONFIGS / "smoke.yaml"),
                "--out",
                str(tmp_path / engine),
                "--engine",
                engine,
                "--set",
                "train.steps=30",
                "--quiet",
            ],
        )
        assert done.exit_code == 0, done.output
    batched = pd.read_csv(tmp_path / "vectorized" / "lr" / "steps.csv")
    alone = pd.read_csv(tmp_path / "sequential" / "lr" / "steps.csv")
    pd.testing.assert_frame_equal(
        batched[["trial_id", "step", "epoch", "batch"]], alone[["trial_id", "step", "epoch", "batch"]]
    )
    length = batched["batch"].max() + 1
    assert (batched["step"] - 1 == batched["epoch"] * length + batched["batch"]).all()


def skip_workload(seed: int, batch_size: int = 16) -> stabsweep.Workload:
    """Regression with a few batches whose targets are 20× off: the spikes skip_spikes skips."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(320, 4, generator=generator)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]])
    for bad in (9, 14, 17):
        y[bad * batch_size : (bad + 1) * batch_size] *= 20
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    return stabsweep.Workload(
        model=model, train_data=stabsweep.TensorBatches(x, y, batch_size, shuffle=False), loss_fn=nn.MSELoss()
    )


def reference_skip_loop(lr: float, steps: int, sigma: float, window: int) -> tuple[list[float], list[int]]:
    """A plain loop with OLMo-core's rule: skip the update when the loss or the gradient norm is
    more than sigma std above the mean of the last window steps (judged from window // 2 on)."""
    workload = skip_workload(0)
    model, data = workload.model, list(workload.train_data)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses, norms, skipped = [], [], []
    for step in range(steps):
        x, y = data[step % len(data)]
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
        earlier_l, earlier_n = torch.tensor(losses[-window:]), torch.tensor(norms[-window:])
        skip = False
        if len(earlier_l) >= max(2, window // 2):
            std_l, mean_l = torch.std_mean(earlier_l)
            std_n, mean_n = torch.std_mean(earlier_n)
            skip = bool(loss - mean_l > sigma * std_l) or bool(norm - mean_n > sigma * std_n)
        losses.append(float(loss.detach()))
        norms.append(float(norm))
        if skip:
            skipped.append(step + 1)
        else:
            optimizer.step()
    return losses, skipped


@pytest.mark.parametrize("engine", ["sequential", "vectorized"])
def test_skip_spikes_skips_what_a_plain_loop_skips(tmp_path, engine):
    want_losses, want_skipped = reference_skip_loop(0.02, 120, sigma=3.0, window=16)
    assert len(want_skipped) >= 2  # the planted batches do spike
    config = {
        "name": "skip",
        "device": "cpu",
        "workload": {"batch_size": 16},
        "train": {
            "steps": 120,
            "eval_every": 60,
            "optimizer": {"name": "momentum"},
            "skip_spikes": {"sigma": 3.0, "window": 16},
        },
        "lr_sweep": {"lrs": [0.02, 0.002]},
        "execution": {"engine": engine},
        "detect": {"divergence_factor": 1e6, "early_spike_factor": 1e5},
    }
    result = stabsweep.lr(config, factory=skip_workload, out=tmp_path, quiet=True)
    trial = result.trials[result.trials["lr"] == 0.02].iloc[0]
    assert int(trial["skipped_steps"]) == len(want_skipped)
    got = result.steps[result.steps["trial_id"] == trial["trial_id"]]["train_loss"].to_numpy()
    np.testing.assert_allclose(got, want_losses, rtol=2e-5)


def test_skip_spikes_with_adam_runs_one_trial_at_a_time_and_says_why(tmp_path, capsys):
    config = {
        "name": "skip-adam",
        "device": "cpu",
        "workload": {"batch_size": 16},
        "train": {
            "steps": 40,
            "eval_every": 20,
            "optimizer": {"name": "adam"},
            "skip_spikes": {"sigma": 3.0, "window": 16},
        },
        "lr_sweep": {"lrs": [0.01, 0.001]},
    }
    result = stabsweep.lr(config, factory=skip_workload, out=tmp_path)
    assert (result.trials["skipped_steps"] >= 0).all()
    assert "train.skip_spikes with adam" in capsys.readouterr().err
