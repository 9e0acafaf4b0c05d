"""Several seeds per rate: a multi-seed batch against each seed alone, and seeds on the command line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from stabsweep import Workload
from stabsweep.cli import app
from stabsweep.config.schema import DetectConfig, OptimizerConfig, ScheduleConfig, WorkloadConfig
from stabsweep.engine.runner import run_trials
from stabsweep.optim.optimizers import OPTIMIZERS
from stabsweep.records import TrialJob, TrialSpec
from stabsweep.training.sequential import train_trial
from stabsweep.training.vectorized import TrialBatch
from stabsweep.workloads import resolve_factory

from .reference import dropout_workload

MLP = resolve_factory(WorkloadConfig(name="mlp", args={"hidden": 32, "depth": 2}, batch_size=32))
CPU = torch.device("cpu")
runner = CliRunner()
RATES = {  # calm rates per optimizer, where two float32 runs agree for many steps
    "sgd": (0.05, 0.2),
    "momentum": (0.01, 0.05),
    "nesterov": (0.01, 0.05),
    "rmsprop": (1e-4, 1e-3),
    "adam": (1e-4, 1e-3),
    "nadam": (1e-4, 1e-3),
    "adamw": (1e-4, 1e-3),
    "adagrad": (1e-3, 1e-2),
    "amsgrad": (1e-4, 1e-3),
}


def grid(rates, seeds, steps=30) -> list[TrialSpec]:
    return [
        TrialSpec(k * len(rates) + i, lr, seed, steps, 10, ScheduleConfig())
        for k, seed in enumerate(seeds)
        for i, lr in enumerate(rates)
    ]


def alone(spec: TrialSpec, factory, optimizer) -> object:
    return train_trial(spec, factory, optimizer, DetectConfig(), CPU)


def assert_matches_alone(results, factory, optimizer, steps=20) -> None:
    for result in results:
        single = alone(result.spec, factory, optimizer)
        got, want = result.steps.train_loss[:steps], single.steps.train_loss[:steps]
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"lr={result.spec.lr} seed={result.spec.seed}")
        assert result.status is single.status
        assert [e["step"] for e in result.evals] == [e["step"] for e in single.evals]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_batch_of_several_seeds_matches_each_seed_alone(name):
    optimizer = OptimizerConfig(name=name)
    specs = grid(RATES[name], seeds=[0, 1, 2])
    results = list(TrialBatch(specs, MLP, optimizer, DetectConfig(), CPU).run())
    assert len(results) == 6 and all(r.engine == "vectorized" for r in results)
    assert_matches_alone(results, MLP, optimizer)
    by_seed = {r.spec.seed: r.steps.train_loss[0] for r in results}
    assert len(set(by_seed.values())) == 3  # each seed its own initial weights and first batch


def test_seeds_of_a_model_with_dropout_get_each_seed_s_own_masks():
    """The masks come from each seed's own random stream, as alone (one vmap call per seed)."""
    optimizer = OptimizerConfig(name="adam")
    specs = grid((1e-3, 3e-3), seeds=[0, 1])
    batch = TrialBatch(specs, dropout_workload, optimizer, DetectConfig(), CPU)
    results = list(batch.run())
    assert batch.seeds.random is True
    assert_matches_alone(results, dropout_workload, optimizer, steps=30)


class FrozenProjection(nn.Module):
    """A frozen random projection drawn from the seed (a buffer-like parameter that differs per seed)."""

    def __init__(self) -> None:
        super().__init__()
        self.project = nn.Linear(8, 16)
        self.project.requires_grad_(False)
        self.head = nn.Linear(16, 3)
        self.register_buffer("scale", torch.rand(()) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.project(x)) * self.scale)


def frozen_workload(seed: int) -> Workload:
    base = dropout_workload(seed)
    torch.manual_seed(seed)
    return Workload(FrozenProjection(), base.train_data, base.eval_data, loss_fn=nn.CrossEntropyLoss())


def test_frozen_weights_and_buffers_that_differ_by_seed_go_per_row():
    optimizer = OptimizerConfig(name="adam")
    specs = grid((1e-3, 1e-2), seeds=[0, 1, 2])
    batch = TrialBatch(specs, frozen_workload, optimizer, DetectConfig(), CPU)
    results = list(batch.run())
    assert {"model.project.weight", "model.scale"} <= set(batch.row_shared)
    assert_matches_alone(results, frozen_workload, optimizer)


def test_the_engine_batches_seeds_together():
    job = TrialJob(MLP, OptimizerConfig(name="momentum"), DetectConfig(), "cpu")
    results = list(run_trials(grid((0.01, 0.05), seeds=[3, 4], steps=15), job))
    assert len(results) == 4 and {r.engine for r in results} == {"vectorized"}
    assert {r.spec.seed for r in results} == {3, 4}


@pytest.mark.slow
def test_a_trial_with_seed_k_is_the_training_of_a_one_seed_sweep_with_seed_k(smoke_config, tmp_path):
    many = runner.invoke(app, ["lr", str(smoke_config), "--out", str(tmp_path / "many"), "-q", "--seeds", "3"])
    one = runner.invoke(app, ["lr", str(smoke_config), "--out", str(tmp_path / "one"), "-q", "--set", "seed=2"])
    assert many.exit_code == 0 and one.exit_code == 0, many.output + one.output
    trials = pd.read_csv(tmp_path / "many" / "lr" / "trials.csv")
    assert sorted(trials["seed"].unique()) == [0, 1, 2] and len(trials) == 3 * 6
    steps = pd.read_csv(tmp_path / "many" / "lr" / "steps.csv")
    single_trials = pd.read_csv(tmp_path / "one" / "lr" / "trials.csv")
    single_steps = pd.read_csv(tmp_path / "one" / "lr" / "steps.csv")
    for row in single_trials.itertuples():
        twin = trials[(trials["seed"] == 2) & (trials["lr"] == row.lr)].iloc[0]
        assert (twin["status"], twin["steps_run"]) == (row.status, row.steps_run)
        got = steps[steps["trial_id"] == twin["trial_id"]]["train_loss"].to_numpy()[:20]
        want = single_steps[single_steps["trial_id"] == row.trial_id]["train_loss"].to_numpy()[:20]
        np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.slow
def test_resume_with_more_seeds_runs_only_the_new_ones(smoke_config, tmp_path):
    assert runner.invoke(app, ["lr", str(smoke_config), "--out", str(tmp_path), "-q"]).exit_code == 0
    before = pd.read_csv(tmp_path / "lr" / "trials.csv")
    result = runner.invoke(app, ["lr", str(smoke_config), "--out", str(tmp_path), "--resume", "--seeds", "2", "--json"])
    assert result.exit_code == 0, result.output
    after = pd.read_csv(tmp_path / "lr" / "trials.csv")
    assert len(after) == 2 * len(before)
    pd.testing.assert_frame_equal(after.iloc[: len(before)], before)  # the first seed's trials, untouched
    assert sorted(after["seed"].unique()) == [0, 1]
    summary = json.loads(result.stdout)
    assert summary["seeds"] == 2 and all(rate["seeds"] == 2 for rate in summary["rates"])


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "true", "many"])
def test_bad_seed_counts_name_the_key(smoke_config, tmp_path, value):
    result = runner.invoke(app, ["lr", str(smoke_config), "--out", str(tmp_path), "--set", f"lr_sweep.seeds={value}"])
    assert result.exit_code == 2 and "lr_sweep.seeds" in result.output and "Traceback" not in result.output
    flag = runner.invoke(app, ["lr", str(smoke_config), "--out", str(tmp_path), "--seeds", "0"])
    assert flag.exit_code == 2 and "--seeds" in flag.output
