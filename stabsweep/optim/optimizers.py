"""Optimizers by name (docs/contract.md, "Config"), all straight from ``torch.optim``.

Adding one is one registry entry: the torch class and the defaults that make the name mean
what practitioners mean by it ("momentum" is SGD with momentum 0.9, "amsgrad" is Adam with
``amsgrad=True``). Config keys override the defaults and are checked against the class's
signature, so a misspelt ``momentun`` is an error, not a silent no-op.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

from stabsweep.errors import ConfigKeyError, did_you_mean, short_repr


@dataclass(frozen=True)
class OptimizerSpec:
    cls_name: str  # attribute of torch.optim
    defaults: dict[str, Any] = field(default_factory=dict)


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec("SGD"),
    "momentum": OptimizerSpec("SGD", {"momentum": 0.9}),
    "nesterov": OptimizerSpec("SGD", {"momentum": 0.9, "nesterov": True}),
    "rmsprop": OptimizerSpec("RMSprop"),
    "adam": OptimizerSpec("Adam"),
    "nadam": OptimizerSpec("NAdam"),
    "adamw": OptimizerSpec("AdamW"),
    "adagrad": OptimizerSpec("Adagrad"),
    "amsgrad": OptimizerSpec("Adam", {"amsgrad": True}),
}

# Keyword arguments the sweep owns or that change how the step runs, not what it computes.
_RESERVED = {"params", "lr"}


def optimizer_class(name: str) -> type:
    import torch.optim

    return getattr(torch.optim, OPTIMIZERS[name].cls_name)


def optimizer_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**OPTIMIZERS[name].defaults, **kwargs}


def check_optimizer(name: str, kwargs: dict[str, Any], build: bool = True) -> None:
    """Raise ValueError (a config error at the optimizer's key path) for a bad name or kwarg.
    ``build=False`` checks the name only (a config a run saved, judged when it ran): the
    arguments are checked against the torch class, whose import takes seconds."""
    if name not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer '{name}'{did_you_mean(name, tuple(OPTIMIZERS))}; "
            f"expected one of {', '.join(OPTIMIZERS)}"
        )
    if not build:
        return
    cls = optimizer_class(name)
    signature = inspect.signature(cls).parameters
    accepted = [p for p in signature if p not in _RESERVED]
    for key, value in kwargs.items():
        if key in _RESERVED:
            raise ConfigKeyError(key, f"'{key}' is set by the sweep, not by the optimizer block")
        if key not in accepted:
            raise ConfigKeyError(
                key,
                f"{cls.__name__} has no argument '{key}'{did_you_mean(key, accepted)}; it takes {', '.join(accepted)}",
            )
        _check_value(key, value, signature[key].default)
    import torch

    try:  # let torch judge the values (negative momentum, betas out of range, ...)
        cls([torch.zeros(1, requires_grad=True)], lr=0.1, **optimizer_kwargs(name, kwargs))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{cls.__name__} rejected these arguments: {exc}") from None


def _check_value(key: str, value: Any, default: Any) -> None:
    """What torch does not check: a number given as true/false, a flag given as a number, NaN or
    inf (``momentum: .nan`` passes torch's ``momentum < 0`` test and trains NaN)."""
    numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
    if numeric and isinstance(value, bool):
        raise ConfigKeyError(key, f"expected a number, not {str(value).lower()}")
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ConfigKeyError(key, f"expected true or false (got {short_repr(value)})")
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigKeyError(key, f"expected finite numbers (got {short_repr(value)})")


def build_optimizer(name: str, kwargs: dict[str, Any], params: Any, lr: float) -> Any:
    return optimizer_class(name)(params, lr=lr, **optimizer_kwargs(name, kwargs))
