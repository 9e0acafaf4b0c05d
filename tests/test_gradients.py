"""The flat gradient buffer: one norm per step, and a plain loop's semantics for gradients."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import get_total_norm

from stabsweep.config.schema import DetectConfig, OptimizerConfig, ScheduleConfig
from stabsweep.records import TrialSpec
from stabsweep.training.gradients import FlatGrads
from stabsweep.training.sequential import train_trial
from tests.reference import sometimes_extra

CPU = torch.device("cpu")


def test_a_parameter_left_out_of_a_step_is_skipped_as_in_a_plain_loop():
    steps, lr = 30, 0.05
    models: list[nn.Module] = []
    factory = sometimes_extra(models)
    spec = TrialSpec(0, lr, 0, steps, eval_every=steps, schedule=ScheduleConfig())
    optimizer = OptimizerConfig(name="momentum", weight_decay=0.01)
    result = train_trial(spec, factory, optimizer, DetectConfig(), CPU)

    workload = factory(0)  # the same training by hand, zero_grad(set_to_none=True) as torch's default
    plain = torch.optim.SGD(workload.model.parameters(), lr=lr, momentum=0.9, weight_decay=0.01)
    losses, norms = [], []
    batches = (batch for _ in range(steps) for batch in workload.train_data)  # epochs, re-iterated
    for _ in range(steps):
        loss = workload.loss(workload.model, next(batches))
        plain.zero_grad()
        loss.backward()
        norms.append(get_total_norm([p.grad for p in workload.model.parameters() if p.grad is not None]).item())
        plain.step()
        losses.append(loss.item())
    np.testing.assert_allclose(result.steps.train_loss, losses, rtol=1e-6)
    np.testing.assert_allclose(result.steps.grad_norm, norms, rtol=1e-5)
    trained, by_hand = models[0], models[1]
    torch.testing.assert_close(trained["extra"].weight, by_hand["extra"].weight)
    assert all(p.grad is None for p in trained.parameters())  # the buffer's views are gone


def test_norm_over_mixed_dtypes_is_the_global_norm():
    a = torch.randn(5, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    grads = FlatGrads([a, b])
    grads.zero()
    ((a * 2).sum() + (b**2).sum()).backward()
    expected = torch.linalg.vector_norm(torch.cat([a.grad, b.grad.float()]))
    torch.testing.assert_close(grads.norm().float(), expected)
    assert a.grad.data_ptr() == grads.buffers[0].data_ptr()  # accumulated in place, not a fresh tensor
    grads.close()
    assert a.grad is None and b.grad is None
    reached = len(grads.reached)
    (a.sum() + b.sum()).backward()
    assert len(grads.reached) == reached  # the hooks are gone: a model may outlive its trial
