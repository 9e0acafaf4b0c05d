"""Workloads written the way users write them: a sequence model whose loss_fn reshapes targets,
a model that returns (logits, loss), metrics of their own, a loss that raises part-way, a
factory bug. A side metric never fails a trial; a trial that raises keeps the steps it ran; a
sweep where nothing trains ends with exit 3."""

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
from stabsweep.config.schema import DetectConfig, OptimizerConfig, ScheduleConfig
from stabsweep.engine.runner import run_trials
from stabsweep.records import TrialJob, TrialSpec, TrialStatus
from stabsweep.training.common import classifies

from . import reference

runner = CliRunner()
VOCAB, LENGTH = 12, 8


class NextToken(nn.Module):
    """A tiny language model: embedding, a causal mixing of earlier positions, a head."""

    def __init__(self, flat: bool) -> None:
        super().__init__()
        self.flat = flat
        self.embed = nn.Embedding(VOCAB, 16)
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(tokens)
        hidden = hidden + torch.tanh(self.mix(hidden.cumsum(1) / torch.arange(1, tokens.shape[1] + 1)[:, None]))
        logits = self.head(hidden)
        return logits.reshape(-1, VOCAB) if self.flat else logits  # [B·T, V] as many user models return


def flat_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, targets.reshape(-1))  # reshapes the [B, T] targets itself


def tokens(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(VOCAB, (320, 1), generator=generator)
    return (start + torch.arange(LENGTH + 1)) % VOCAB  # each next token follows from the last


def sequence_workload(seed: int, flat: bool = True, metrics: dict | None = None) -> Workload:
    data = tokens(1234)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data[:256, :-1], data[:256, 1:]),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data[256:, :-1], data[256:, 1:]), batch_size=64)
    torch.manual_seed(seed)
    loss_fn = flat_cross_entropy if flat else lambda out, y: nn.functional.cross_entropy(out.transpose(1, 2), y)
    return Workload(NextToken(flat), loader, eval_data=val, loss_fn=loss_fn, metrics=metrics)


def job(factory, engine: str = "auto") -> TrialJob:
    return TrialJob(factory, OptimizerConfig(name="adam"), DetectConfig(), "cpu", engine=engine)


def sweep(factory, *lrs: float, steps: int = 60, engine: str = "auto"):
    specs = [TrialSpec(i, lr, 0, steps, 20, ScheduleConfig()) for i, lr in enumerate(lrs)]
    return sorted(run_trials(specs, job(factory, engine)), key=lambda r: r.spec.trial_id)


def plain_losses(factory, lr: float, steps: int) -> np.ndarray:
    """Adam at a constant rate in a plain loop (tests/reference.py), on seed 0's workload."""
    return reference.plain_losses(factory(0), lr, steps)


@pytest.mark.parametrize("engine", ["vectorized", "sequential"])
def test_a_sequence_model_whose_loss_fn_reshapes_targets_trains_without_accuracy(engine):
    results = sweep(sequence_workload, 0.003, 0.03, engine=engine)
    assert [r.status for r in results] != [TrialStatus.FAILED] * 2
    assert all(r.status is not TrialStatus.FAILED for r in results), [r.error for r in results]
    assert all("eval_accuracy" not in e for r in results for e in r.evals)  # [B·T, V] vs [B, T]: undefined
    np.testing.assert_allclose(results[1].steps.train_loss[:20], plain_losses(sequence_workload, 0.03, 20), rtol=1e-5)


def test_token_accuracy_where_outputs_have_one_more_dimension_than_targets():
    results = sweep(lambda seed: sequence_workload(seed, flat=False), 0.03, 0.1)
    final = results[1].evals[-1]
    assert 0 <= final["eval_accuracy"] <= 1 and final["eval_accuracy"] > 0.5  # the pattern is learnable


@pytest.mark.parametrize(
    ("outputs", "targets", "defined"),
    [
        ((32, 10), (32,), True),
        ((4, 8, 12), (4, 8), True),
        ((32, 12), (4, 8), False),  # flattened outputs, unflattened targets
        ((32, 1), (32,), False),  # one score is not a class distribution
        ((32,), (32,), False),
    ],
)
def test_when_accuracy_is_defined(outputs, targets, defined):
    assert classifies(torch.zeros(outputs), torch.zeros(targets, dtype=torch.long)) is defined
    assert not classifies(torch.zeros(outputs), torch.zeros(targets))  # float targets: regression


def test_a_failing_metric_is_left_out_with_a_note_and_a_working_one_is_reported():
    def broken(outputs, targets):
        raise ValueError("my metric has a bug")

    def perplexity(outputs, targets):
        return flat_cross_entropy(outputs, targets).exp()

    results = sweep(lambda seed: sequence_workload(seed, metrics={"broken": broken, "ppl": perplexity}), 0.03, 0.1)
    for result in results:
        assert result.status is not TrialStatus.FAILED
        assert all("eval_ppl" in e and "eval_broken" not in e for e in result.evals)
        assert any("metric 'broken' left out" in note and "my metric has a bug" in note for note in result.notes)
    assert results[0].evals[-1]["eval_ppl"] == pytest.approx(np.exp(results[0].evals[-1]["eval_loss"]), rel=0.2)


def test_the_chance_level_rule_is_not_applied_to_a_shape_it_does_not_understand():
    results = sweep(sequence_workload, 1e-6, steps=40)  # learns nothing at all
    assert results[0].status is TrialStatus.LEARNED_NOTHING
    assert "chance level" not in results[0].reason  # C is unknown: the flat outputs do not say it


def raises_at(step: int):
    def factory(seed: int) -> Workload:
        workload = sequence_workload(seed)
        calls = [0]

        def loss(model, batch):
            calls[0] += model.training
            if calls[0] > step:
                raise RuntimeError("my data pipeline broke")
            return flat_cross_entropy(model(batch[0]), batch[1])

        return Workload(workload.model, workload.train_data, workload.eval_data, loss=loss)

    return factory


@pytest.mark.parametrize("engine", ["vectorized", "sequential"])
def test_a_trial_that_raises_part_way_keeps_the_steps_it_ran(engine):
    results = sweep(raises_at(25), 0.01, 0.02, engine=engine)
    for result in results:
        assert result.status is TrialStatus.FAILED and result.engine == engine
        assert result.steps_run == 25 and len(result.steps.train_loss) == 25
        assert np.isfinite(result.steps.train_loss).all()
        assert "my data pipeline broke" in result.error and "after 25 steps" in result.reason
        assert "test_user_workloads.py" in result.reason  # where, in the user's code


FACTORY = """\
import torch
import stabsweep
from stabsweep.workloads.mlp import build as mlp

def build(seed, batch_size=32):
    workload = mlp(seed, batch_size=batch_size, hidden=16, depth=1)

    def loss(model, batch):
        logits = model(batch[0])
        return torch.nn.functional.cross_entropy(logits, batch[1]) * undefined_scale  # a bug

    return stabsweep.Workload(model=workload.model, train_data=workload.train_data, loss=loss)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["lr", "{config}"],
        ["warmup", "{config}", "--unstable-lr", "0.1"],
        ["clip-report", "{config}", "--lr", "0.1"],
    ],
    ids=["lr", "warmup", "clip-report"],
)
def test_when_nothing_trains_the_command_writes_its_files_quotes_the_error_once_and_exits_3(args, tmp_path):
    (tmp_path / "buggy.py").write_text(FACTORY)
    config = tmp_path / "buggy.yaml"
    config.write_text(
        "name: buggy\nworkload: {factory: 'buggy.py:build'}\n"
        "train: {steps: 20, eval_every: 10}\nlr_sweep: {lrs: [0.01, 0.1]}\nwarmup_sweep: {warmup_steps: [1, 2]}\n"
    )
    args = [a.format(config=config) for a in args]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)
    assert summary["nothing_trained"] is True
    assert "NameError: name 'undefined_scale' is not defined" in summary["verdict"]
    assert "(at buggy.py:10)" in summary["verdict"] and summary["verdict"].count("undefined_scale") == 1
    command = args[0].replace("clip-report", "clip")
    folder = tmp_path / "out" / command
    assert json.loads((folder / "summary.json").read_text()) == summary
    trials = pd.read_csv(folder / "trials.csv")
    assert (trials["status"] == "failed").all()


class WithLoss(nn.Module):
    """nanoGPT's convention: ``forward(tokens, targets)`` returns ``(logits, loss)``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = NextToken(flat=True)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.net(tokens)
        loss = None if targets is None else flat_cross_entropy(logits, targets)
        return logits, loss


def tuple_loss_workload(seed: int) -> Workload:
    base = sequence_workload(seed)
    torch.manual_seed(seed)
    return Workload(WithLoss(), base.train_data, eval_data=base.eval_data, loss=lambda model, batch: model(*batch)[1])


@pytest.mark.parametrize("engine", ["vectorized", "sequential"])
def test_a_loss_that_is_the_second_of_a_tuple_trains_as_a_plain_loop(engine):
    results = sweep(tuple_loss_workload, 1e-3, 3e-2, engine=engine)
    assert all(r.status is TrialStatus.OK for r in results), [r.reason for r in results]
    for result in results:
        workload = tuple_loss_workload(0)
        optimizer = torch.optim.Adam(workload.model.parameters(), lr=result.spec.lr)
        want = []
        for inputs, targets in workload.train_data:
            loss = workload.model(inputs, targets)[1]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            want.append(loss.item())
        np.testing.assert_allclose(result.steps.train_loss[:8], want[:8], rtol=1e-5)
        assert result.best_eval_loss is not None and result.best_eval_loss < result.steps.train_loss[0]
