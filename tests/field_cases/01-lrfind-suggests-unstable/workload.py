"""Digits MLP (4 hidden layers of 128, no normalisation) with SGD + momentum 0.9 at a
constant rate. Its sharpness grows as it trains, so a rate that is harmless for the few
steps a range test spends near it can blow up later in a full run: the 'I used the LR
finder's suggestion and training oscillates / diverges' report."""

import torch
from sklearn.datasets import load_digits
from torch import nn

import stabsweep


def data():
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    return x, y


def build(seed: int, batch_size: int = 64, width: int = 128, depth: int = 4) -> stabsweep.Workload:
    torch.manual_seed(seed)
    layers, fan_in = [], 64
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    model = nn.Sequential(*layers, nn.Linear(fan_in, 10))
    x, y = data()
    train = stabsweep.TensorBatches(x[:1500], y[:1500], batch_size, seed=seed)
    val = stabsweep.TensorBatches(x[1500:], y[1500:], 128, shuffle=False, drop_last=False)
    return stabsweep.Workload(
        model=model, train_data=train, eval_data=val, loss_fn=nn.functional.cross_entropy, num_classes=10
    )
