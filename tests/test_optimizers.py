"""Optimizers by name are torch.optim's own, with the practitioner's defaults."""

from __future__ import annotations

import pytest
import torch

from stabsweep.optim.optimizers import OPTIMIZERS, build_optimizer, check_optimizer


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_builds_and_steps(name):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = build_optimizer(name, {}, [param], lr=0.1)
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert type(optimizer).__module__.startswith("torch.optim")
    param.grad = torch.ones(3)
    optimizer.step()
    assert (param < 1).all()


@pytest.mark.parametrize(
    ("name", "cls", "key", "value"),
    [
        ("momentum", torch.optim.SGD, "momentum", 0.9),
        ("nesterov", torch.optim.SGD, "nesterov", True),
        ("amsgrad", torch.optim.Adam, "amsgrad", True),
        ("adamw", torch.optim.AdamW, "lr", 0.1),
    ],
)
def test_names_mean_what_practitioners_mean(name, cls, key, value):
    optimizer = build_optimizer(name, {}, [torch.nn.Parameter(torch.ones(1))], lr=0.1)
    assert type(optimizer) is cls and optimizer.defaults[key] == value


def test_kwargs_override_defaults():
    optimizer = build_optimizer(
        "momentum", {"momentum": 0.5, "weight_decay": 1e-4}, [torch.nn.Parameter(torch.ones(1))], lr=0.1
    )
    assert optimizer.defaults["momentum"] == 0.5 and optimizer.defaults["weight_decay"] == 1e-4


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("adm", {}, "did you mean 'adam'"),
        ("adam", {"beta": (0.9, 0.99)}, "did you mean 'betas'"),
        ("adam", {"lr": 0.1}, "set by the sweep"),
        ("adam", {"betas": (1.5, 0.9)}, "rejected"),
    ],
)
def test_bad_optimizer_config(name, kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        check_optimizer(name, kwargs)
