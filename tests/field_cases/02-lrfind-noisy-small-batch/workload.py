"""Digits MLP trained on batches of 4 with 15% of the training labels wrong: every batch's
loss is a noisy sample, so a range test's loss-vs-rate curve is jagged and its 'steepest
descent' can land on a noise dip (the LR finder that 'gives different results every run'
and 'is tricked by early spikes')."""

import torch
from sklearn.datasets import load_digits
from torch import nn

import stabsweep


def data(noise: float = 0.15):
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    g = torch.Generator().manual_seed(9)
    wrong = torch.rand(len(y), generator=g) < noise
    y_noisy = y.clone()
    y_noisy[wrong] = torch.randint(0, 10, (int(wrong.sum()),), generator=g)
    return x, y_noisy, y


def build(seed: int, batch_size: int = 4, width: int = 64) -> stabsweep.Workload:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
    x, y_noisy, y_clean = data()
    train = stabsweep.TensorBatches(x[:1500], y_noisy[:1500], batch_size, seed=seed)
    val = stabsweep.TensorBatches(x[1500:], y_clean[1500:], 128, shuffle=False, drop_last=False)
    return stabsweep.Workload(
        model=model, train_data=train, eval_data=val, loss_fn=nn.functional.cross_entropy, num_classes=10
    )
