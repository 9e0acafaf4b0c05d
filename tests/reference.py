"""A plain PyTorch loop, and workloads that test what a plain loop does that a naive engine
would not: training that draws on the global random state, and parameters that a step's
backward does not reach.

The reference a trial must reproduce: what a user would write by hand, with no evaluation in
it, so any random numbers stabsweep's evals drew would show up as different dropout masks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stabsweep import Workload


def dropout_workload(seed: int, batch_size: int = 32) -> Workload:
    """Dropout in training; an eval DataLoader with no generator, so each pass over it draws a
    seed from the global RNG, the RNG dropout draws its masks from."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
    data = torch.Generator().manual_seed(1234)
    x = torch.randn(320, 8, generator=data)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    order = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x[:256], y[:256]), batch_size, shuffle=True, generator=order, drop_last=True)
    val = DataLoader(TensorDataset(x[256:], y[256:]), batch_size=64)
    return Workload(model=model, train_data=train, eval_data=val, loss_fn=nn.CrossEntropyLoss())


def plain_losses(workload: Workload, lr: float, steps: int) -> np.ndarray:
    """Adam at a constant rate, one loss per step; epochs re-iterate the loader."""
    model = workload.model
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    while len(losses) < steps:
        for inputs, targets in workload.train_data:
            loss = workload.loss_fn(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    return np.array(losses)


def sometimes_extra(models: list[nn.Module]):
    """A factory whose loss uses the ``extra`` layer on even steps only (an MoE-like pattern);
    it keeps each model it builds in ``models`` so a test can read the weights afterwards."""

    def build(seed: int) -> Workload:
        base = dropout_workload(seed)
        torch.manual_seed(seed)
        model = nn.ModuleDict({"main": nn.Linear(8, 3), "extra": nn.Linear(8, 3)})
        models.append(model)
        calls = [0]

        def loss(model, batch):
            inputs, targets = batch
            outputs = model["main"](inputs)
            if calls[0] % 2 == 0:
                outputs = outputs + model["extra"](inputs)
            calls[0] += model.training  # eval passes do not count
            return nn.functional.cross_entropy(outputs, targets)

        return Workload(model=model, train_data=base.train_data, loss=loss)

    return build


class EvalHead(nn.Module):
    """Scores with another head in eval mode (a distillation-style head), so training never
    reaches ``eval_head``: a plain loop's optimizer never touches it, weight decay included."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 32)
        self.head = nn.Linear(32, 3)
        self.eval_head = nn.Linear(32, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.body(inputs).relu()
        return self.head(hidden) if self.training else self.eval_head(hidden)


def eval_head_workload(seed: int) -> Workload:
    base = dropout_workload(seed)
    torch.manual_seed(seed)
    return Workload(EvalHead(), base.train_data, eval_data=base.eval_data, loss_fn=nn.CrossEntropyLoss())
