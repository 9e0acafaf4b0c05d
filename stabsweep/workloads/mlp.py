"""The quickstart: a multilayer perceptron on digits."""

from __future__ import annotations

from stabsweep.workloads.base import TensorBatches, Workload
from stabsweep.workloads.digits import NUM_CLASSES, digits_split


def build(seed: int, batch_size: int = 64, hidden: int = 128, depth: int = 3, activation: str = "relu") -> Workload:
    """``depth`` hidden layers of width ``hidden`` between the 64 pixels and the 10 classes."""
    import torch
    from torch import nn

    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
    if activation not in acts:
        raise ValueError(f"activation must be one of {', '.join(acts)}")
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = 64
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), acts[activation]()]
        width = hidden
    layers.append(nn.Linear(width, NUM_CLASSES))
    x_train, y_train, x_val, y_val = digits_split()
    return Workload(
        model=nn.Sequential(*layers),
        train_data=TensorBatches(x_train, y_train, batch_size, seed=seed),
        eval_data=TensorBatches(x_val, y_val, 512, shuffle=False, drop_last=False),
        loss_fn=nn.CrossEntropyLoss(),
        num_classes=NUM_CLASSES,
    )
