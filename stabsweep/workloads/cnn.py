"""A small residual CNN on digits, with the normalization and stride as options.

``norm: batch`` is the realistic default and also the case a vectorized engine cannot batch
(BatchNorm's running statistics are per-model state updated in the forward pass).
"""

from __future__ import annotations

import torch
from torch import nn

from stabsweep.workloads.base import TensorBatches, Workload
from stabsweep.workloads.digits import NUM_CLASSES, digits_split

NORMS = ("batch", "group", "layer", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind in ("group", "layer"):
        return nn.GroupNorm(min(8, channels) if kind == "group" else 1, channels)
    return nn.Identity()


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=bias),
            _norm(norm, channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=bias),
            _norm(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.body(x)).relu()


def build(
    seed: int, batch_size: int = 64, channels: int = 32, blocks: int = 2, norm: str = "batch", stride: int = 1
) -> Workload:
    """Stem conv (``stride`` 1 keeps 8×8, 2 halves it), residual blocks, global pooling."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}")
    if stride not in (1, 2):
        raise ValueError("stride must be 1 or 2")
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, channels, 3, stride=stride, padding=1, bias=norm == "none"),
        _norm(norm, channels),
        nn.ReLU(),
        *[ResidualBlock(channels, norm) for _ in range(blocks)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, NUM_CLASSES),
    )
    x_train, y_train, x_val, y_val = digits_split()
    return Workload(
        model=model,
        train_data=TensorBatches(x_train, y_train, batch_size, seed=seed),
        eval_data=TensorBatches(x_val, y_val, 512, shuffle=False, drop_last=False),
        loss_fn=nn.CrossEntropyLoss(),
        num_classes=NUM_CLASSES,
    )
