"""Digits classifier whose labels were shifted to run 1..10 (as exported by a tool that
counts classes from 1) while the model has 10 outputs and the loss is cross-entropy:
any batch holding the label 10 raises 'Target 10 is out of bounds' on the CPU (on a GPU
the same input ends in a device-side assert)."""

import torch
from sklearn.datasets import load_digits
from torch import nn

import stabsweep


def data():
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long) + 1  # the bug: classes counted from 1
    return x, y


def build(seed: int, batch_size: int = 32, width: int = 64) -> stabsweep.Workload:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
    x, y = data()
    train = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x[:1500], y[:1500]),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        drop_last=True,
    )
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[1500:], y[1500:]), batch_size=128)
    return stabsweep.Workload(model=model, train_data=train, eval_data=val, loss_fn=nn.CrossEntropyLoss())
