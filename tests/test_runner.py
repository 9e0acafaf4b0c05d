"""Which trials share a batch, and what makes a batch fall back to one trial at a time."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from stabsweep.config.schema import DetectConfig, OptimizerConfig, ScheduleConfig, WorkloadConfig
from stabsweep.engine.runner import run_trials, vmap_cannot
from stabsweep.records import TrialJob, TrialSpec, TrialStatus
from stabsweep.training.vectorized import TrialBatch
from stabsweep.workloads import resolve_factory

MLP = resolve_factory(WorkloadConfig(name="mlp", args={"hidden": 16, "depth": 1}, batch_size=32))


def job() -> TrialJob:
    return TrialJob(MLP, OptimizerConfig(name="momentum"), DetectConfig(), "cpu")


def specs(*lrs: float) -> list[TrialSpec]:
    return [TrialSpec(i, lr, 0, 20, 10, ScheduleConfig()) for i, lr in enumerate(lrs)]


@pytest.mark.parametrize(
    ("message", "cannot"),
    [
        ("vmap: It looks like you're attempting to use a Tensor in some data-dependent control flow.", True),
        ("Batching rule not implemented for aten::lstm. We could not generate a fallback.", True),
        ("vmap: We do not yet support calling random operations inside of vmap.", True),
        ("mat1 and mat2 shapes cannot be multiplied (32x64 and 16x10)", False),
    ],
)
def test_what_counts_as_vmap_unable_to_batch(message, cannot):
    assert vmap_cannot(RuntimeError(message)) is cannot
    assert not vmap_cannot(AttributeError(message))


def test_an_engine_bug_is_raised_not_blamed_on_the_trials(monkeypatch):
    """A bug in stabsweep's own code is neither absorbed as a slower run nor reported as every
    trial of the user failing: it is raised (the CLI's exit 1, with the traceback)."""

    def broken_step(self, lrs, skip=None):
        raise AttributeError("'TrialBatch' object has no attribute 'momentum_rows'")

    monkeypatch.setattr(TrialBatch, "_step", broken_step)
    with pytest.raises(AttributeError, match="momentum_rows"):
        list(run_trials(specs(0.01, 0.1), job()))


def test_an_error_of_the_users_code_in_a_batch_is_the_one_the_trial_raises_alone():
    """vmap shows the user's error with an extra trial dimension, from inside torch: the trial
    run alone gives their own error, and every unfinished trial of the batch reports it."""

    def build(seed):
        workload = MLP(seed)
        workload.loss_fn = lambda outputs, targets: torch.nn.functional.cross_entropy(outputs, targets + 9)
        return workload

    results = list(run_trials(specs(0.01, 0.1), dataclasses.replace(job(), factory=build)))
    assert [r.status for r in results] == [TrialStatus.FAILED, TrialStatus.FAILED]
    assert all(r.error.startswith("IndexError: Target") and "out of bounds" in r.error for r in results)
    assert all("dimension" not in r.error for r in results)


def test_what_vmap_cannot_batch_falls_back_and_says_why(monkeypatch):
    def no_rule(self, lrs, skip=None):
        raise RuntimeError("Batching rule not implemented for aten::my_op. We could not generate a fallback.")

    monkeypatch.setattr(TrialBatch, "_step", no_rule)
    results = list(run_trials(specs(0.01, 0.1), job()))
    assert [r.steps_run for r in results] == [20, 20]
    assert all(r.engine == "sequential" and "aten::my_op" in r.fallback for r in results)


def test_the_batch_leaves_no_warnings_filter_behind():
    import warnings

    before = list(warnings.filters)
    list(run_trials(specs(0.01, 0.1), job()))
    assert warnings.filters == before
    assert torch.get_num_threads() >= 1
