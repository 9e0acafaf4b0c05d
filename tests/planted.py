"""Workloads for ``stabsweep doctor``: a healthy one, and each with one bug planted.

Named in configs as ``tests.planted:NAME`` (a module path, resolved from the repository root).
"""

from __future__ import annotations

import torch
from torch import nn

import stabsweep

CLASSES = 4


def _data(seed: int, batch_size: int = 32, corrupt: str | None = None):
    generator = torch.Generator().manual_seed(1234)
    x = torch.randn(512, 16, generator=generator)
    y = (x[:, :2] > 0).long() @ torch.tensor([1, 2])  # 4 classes from two signs
    if corrupt == "nan":
        x[300, 7] = float("nan")
    if corrupt == "labels":
        y[100:110] = CLASSES + 2
    order = torch.Generator().manual_seed(seed)
    train = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x[:448], y[:448]), batch_size=batch_size, shuffle=True, generator=order
    )
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[448:], y[448:]), batch_size=64)
    return train, val


def _mlp(width: int = 64) -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, CLASSES))


def healthy(seed: int, batch_size: int = 32) -> stabsweep.Workload:
    torch.manual_seed(seed)
    train, val = _data(seed, batch_size)
    return stabsweep.Workload(_mlp(), train, val, loss_fn=nn.CrossEntropyLoss())


def nan_in_data(seed: int, batch_size: int = 32) -> stabsweep.Workload:
    torch.manual_seed(seed)
    train, val = _data(seed, batch_size, corrupt="nan")
    return stabsweep.Workload(_mlp(), train, val, loss_fn=nn.CrossEntropyLoss())


def labels_out_of_range(seed: int, batch_size: int = 32) -> stabsweep.Workload:
    torch.manual_seed(seed)
    train, val = _data(seed, batch_size, corrupt="labels")
    return stabsweep.Workload(_mlp(), train, val, loss_fn=nn.CrossEntropyLoss())


def scaled_logits(seed: int, batch_size: int = 32) -> stabsweep.Workload:
    """The head's init is 100× too large: confident, wrong logits at step 0."""
    torch.manual_seed(seed)
    model = _mlp()
    with torch.no_grad():
        model[-1].weight.mul_(100)
    train, val = _data(seed, batch_size)
    return stabsweep.Workload(model, train, val, loss_fn=nn.CrossEntropyLoss())


def cannot_learn(seed: int, batch_size: int = 32) -> stabsweep.Workload:
    """The loss compares the outputs with freshly shuffled targets: nothing can be fit."""
    torch.manual_seed(seed)
    train, val = _data(seed, batch_size)

    def shuffled(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs, targets[torch.randperm(len(targets))])

    return stabsweep.Workload(_mlp(), train, val, loss_fn=shuffled)


class _DoubledBackward(torch.autograd.Function):
    """tanh, with a hand-written backward that is twice what it should be."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return 2 * grad * (1 - y * y)


class WrongBackward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(16, 32), nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(_DoubledBackward.apply(self.inp(x)))


def wrong_backward(seed: int, batch_size: int = 32) -> stabsweep.Workload:
    torch.manual_seed(seed)
    train, val = _data(seed, batch_size)
    return stabsweep.Workload(WrongBackward(), train, val, loss_fn=nn.CrossEntropyLoss())


def dead_relus(seed: int, batch_size: int = 32) -> stabsweep.Workload:
    """The hidden biases start at −10: every ReLU is off for every input."""
    torch.manual_seed(seed)
    model = _mlp()
    with torch.no_grad():
        model[0].bias.fill_(-10.0)
        model[2].bias.fill_(-10.0)
    train, val = _data(seed, batch_size)
    return stabsweep.Workload(model, train, val, loss_fn=nn.CrossEntropyLoss())


def vanishing(seed: int, batch_size: int = 32) -> stabsweep.Workload:
    """Twelve tanh layers at a tenth of the usual init: the gradient fades towards the input."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(12):
        linear = nn.Linear(16 if i == 0 else 32, 32)
        with torch.no_grad():
            linear.weight.mul_(0.1)
        layers += [linear, nn.Tanh()]
    train, val = _data(seed, batch_size)
    return stabsweep.Workload(nn.Sequential(*layers, nn.Linear(32, CLASSES)), train, val, loss_fn=nn.CrossEntropyLoss())


class Crashes(nn.Module):
    """Trains fine; raises in eval mode (a bug on one code path)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            raise RuntimeError("my model's eval path is broken")
        return self.body(x)


def crashes_in_eval_mode(seed: int, batch_size: int = 32) -> stabsweep.Workload:
    torch.manual_seed(seed)
    train, val = _data(seed, batch_size)
    return stabsweep.Workload(Crashes(), train, val, loss_fn=nn.CrossEntropyLoss())


def outlier_batch(seed: int, batch_size: int = 32, scale: float = 300.0) -> stabsweep.Workload:
    """Batch 5 of every epoch (no shuffling) holds inputs ``scale``× too large: its loss is a
    hundred times the others' at any rate, the data's fault and not the rate's."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(1234)
    x = torch.randn(512, 16, generator=generator)
    y = (x[:, :2] > 0).long() @ torch.tensor([1, 2])
    x[5 * batch_size : 6 * batch_size] *= scale
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:448], y[:448]), batch_size=batch_size)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[448:], y[448:]), batch_size=64)
    return stabsweep.Workload(_mlp(), train, val, loss_fn=nn.CrossEntropyLoss())


class SqrtAtZero(nn.Module):
    """sqrt(h · [h > 0]), a hand-made sqrt(relu): a finite forward, but the gradient of sqrt at 0
    is inf, and inf × the mask's 0 is NaN: the weights below it get NaN gradients while the
    loss is finite (torch's own relu masks its gradient instead, and would not show it)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(16, 32), nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(torch.sqrt(h * (h > 0)))


def sqrt_at_zero(seed: int, batch_size: int = 32) -> stabsweep.Workload:
    torch.manual_seed(seed)
    train, val = _data(seed, batch_size)
    return stabsweep.Workload(SqrtAtZero(), train, val, loss_fn=nn.CrossEntropyLoss())
