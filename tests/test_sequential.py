"""One trial: per-step records, divergence stops at once, a raising trial is a result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stabsweep.config.schema import ClipConfig, DetectConfig, OptimizerConfig, ScheduleConfig, WorkloadConfig
from stabsweep.records import TrialSpec, TrialStatus
from stabsweep.training.sequential import train_trial
from stabsweep.workloads import Workload, resolve_factory
from tests.reference import dropout_workload, plain_losses

MLP = resolve_factory(WorkloadConfig(name="mlp", args={"hidden": 16, "depth": 1}, batch_size=32))
CPU = torch.device("cpu")


def run(lr, steps=40, clip=None, optimizer="momentum", factory=MLP, schedule=None, warmup_steps=0):
    spec = TrialSpec(
        0, lr, 0, steps, eval_every=10, schedule=schedule or ScheduleConfig(), clip=clip, warmup_steps=warmup_steps
    )
    return train_trial(spec, factory, OptimizerConfig(name=optimizer), DetectConfig(), CPU)


def plain_pytorch_losses(lr, steps):
    """The same training written as a bare PyTorch loop: the reference the trainer must match."""
    workload = MLP(seed=0)
    model, data = workload.model, workload.train_data
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses, norms = [], []
    batches = iter(())
    for _ in range(steps):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(data)
            x, y = next(batches)
        loss = workload.loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item())
        losses.append(loss.item())
        optimizer.step()
    return np.array(losses), np.array(norms)


def test_matches_a_plain_pytorch_loop():
    result = run(0.05, steps=60)
    losses, norms = plain_pytorch_losses(0.05, 60)
    np.testing.assert_allclose(result.steps.train_loss, losses, rtol=1e-5)
    np.testing.assert_allclose(result.steps.grad_norm, norms, rtol=1e-4)
    assert result.status is TrialStatus.OK
    assert [e["step"] for e in result.evals] == [0, 10, 20, 30, 40, 50, 60]
    assert 0 <= result.evals[-1]["eval_accuracy"] <= 1


def test_evals_leave_the_random_state_of_training_alone():
    # Each pass over the eval loader draws a seed from the RNG dropout uses; were that draw
    # left in, the masks after every eval would differ from a plain loop's without evals.
    spec = TrialSpec(0, 1e-3, 0, 30, eval_every=5, schedule=ScheduleConfig())
    result = train_trial(spec, dropout_workload, OptimizerConfig(name="adam"), DetectConfig(), CPU)
    np.testing.assert_allclose(result.steps.train_loss, plain_losses(dropout_workload(0), 1e-3, 30), rtol=1e-6)
    assert [e["step"] for e in result.evals] == [0, 5, 10, 15, 20, 25, 30]


def test_diverged_trial_stops_where_the_divergence_is_decided():
    # A loss above the bar must stay there one more step (detect.divergence_patience): the trial
    # stops at that step, and diverged_step is where the run of bad losses began.
    result = run(50.0, steps=200)
    assert result.status is TrialStatus.DIVERGED
    assert result.diverged_step <= result.steps_run <= result.diverged_step + 1 < 200
    assert len(result.steps.train_loss) == result.steps_run
    bad = result.steps.train_loss[-1]
    assert not np.isfinite(bad) or bad > 4 * result.steps.train_loss[0]


def test_grad_norm_is_recorded_before_clipping():
    unclipped = run(0.05, steps=20)
    clipped = run(0.05, steps=20, clip=ClipConfig(threshold=1e-3))
    assert clipped.steps.grad_norm[0] == pytest.approx(unclipped.steps.grad_norm[0])
    assert clipped.steps.grad_norm[0] > 1e-3
    assert clipped.steps.clipped.all() and (clipped.steps.clip_threshold == pytest.approx(1e-3))
    assert not unclipped.steps.clipped.any() and np.isnan(unclipped.steps.clip_threshold).all()


def test_lr_column_follows_the_schedule_and_warmup():
    result = run(0.1, steps=10, warmup_steps=4)
    np.testing.assert_allclose(result.steps.lr[:5], [0.025, 0.05, 0.075, 0.1, 0.1])


def test_a_trial_that_raises_is_failed_not_a_crash():
    def exploding(seed):
        workload = MLP(seed)

        def loss(model, batch):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

        return Workload(model=workload.model, train_data=workload.train_data, loss=loss)

    result = run(0.1, factory=exploding)
    assert result.status is TrialStatus.FAILED
    assert "OutOfMemoryError" in result.error and result.steps_run == 0


def test_chunked_sync_cuts_records_and_evals_at_the_diverged_step(monkeypatch):
    """The GPU path reads metrics every 32 steps; nothing past the bad step may survive."""
    from stabsweep.training import sequential as trainer

    monkeypatch.setattr(trainer, "CPU_SYNC_EVERY", 32)
    spec = TrialSpec(0, 50.0, 0, 200, eval_every=2, schedule=ScheduleConfig())
    result = train_trial(spec, MLP, OptimizerConfig(name="momentum"), DetectConfig(), CPU)
    per_step = run(50.0, steps=200)  # the same trial judged every step
    assert result.status is TrialStatus.DIVERGED
    assert result.diverged_step == per_step.diverged_step and result.steps_run == per_step.steps_run
    assert len(result.steps.train_loss) == result.steps_run
    assert max(e["step"] for e in result.evals) <= result.steps_run
