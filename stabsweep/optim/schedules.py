"""Learning-rate schedules by name (docs/contract.md, "Config"), built on ``torch.optim.lr_scheduler``.

A schedule is turned into an *lr table* once, before a trial starts: the learning rate of
every step, computed by stepping the real torch scheduler on a throw-away optimizer. The
training loop then only reads ``table[step]``: no scheduler bookkeeping on the hot path, and
one representation that both the single-trial loop and a batched engine can use.

Convention: ``table[t]`` is the rate of the update at step ``t`` (0-based). A linear warmup
of ``w`` steps uses ``base_lr · (t + 1) / w`` for ``t < w``: the ramp from 0 whose first
update is not wasted at lr = 0.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, ValidationError, create_model

from stabsweep.errors import ConfigKeyError, did_you_mean, short_repr
from stabsweep.numbers import Float, Int

# builder(optimizer, steps, base_lr, **kwargs) -> torch LRScheduler. The keyword arguments'
# annotations are what a config may give them: check_schedule validates against them.
ScheduleBuilder = Callable[..., Any]
Steps = Annotated[Int, Field(ge=1, le=100_000_000)]
Factor = Annotated[Float, Field(ge=0, le=1)]
Positive = Annotated[Float, Field(gt=0, le=1e12)]


def _ramp(optimizer: Any, warmup_steps: int) -> Any:
    from torch.optim.lr_scheduler import LinearLR

    return LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=max(warmup_steps - 1, 1))


def constant(optimizer: Any, steps: int, base_lr: float) -> Any:
    from torch.optim.lr_scheduler import ConstantLR

    return ConstantLR(optimizer, factor=1.0, total_iters=0)


def cosine(optimizer: Any, steps: int, base_lr: float, min_factor: Factor = 0.0) -> Any:
    from torch.optim.lr_scheduler import CosineAnnealingLR

    return CosineAnnealingLR(optimizer, T_max=max(steps - 1, 1), eta_min=min_factor * base_lr)


def linear(optimizer: Any, steps: int, base_lr: float, min_factor: Factor = 0.0) -> Any:
    from torch.optim.lr_scheduler import LinearLR

    return LinearLR(optimizer, start_factor=1.0, end_factor=max(min_factor, 1e-12), total_iters=max(steps - 1, 1))


_AFTER_WARMUP = {"constant": constant, "cosine": cosine, "linear": linear}


def warmup(
    optimizer: Any,
    steps: int,
    base_lr: float,
    warmup_steps: Steps = 100,
    after: Literal["constant", "cosine", "linear"] = "constant",
    min_factor: Factor = 0.0,
) -> Any:
    """Linear warmup from 0 to base_lr over ``warmup_steps``, then constant, cosine or linear decay."""
    from torch.optim.lr_scheduler import SequentialLR

    rest = max(steps - warmup_steps, 1)
    tail = _AFTER_WARMUP[after](optimizer, rest, base_lr, **({} if after == "constant" else {"min_factor": min_factor}))
    return SequentialLR(optimizer, [_ramp(optimizer, warmup_steps), tail], milestones=[warmup_steps])


def inverse_sqrt(optimizer: Any, steps: int, base_lr: float, warmup_steps: Steps = 100) -> Any:
    """Transformer-style: linear warmup, then base_lr · sqrt(warmup / step).

    torch has no built-in for this one, so it is a LambdaLR with the formula written out.
    """
    from torch.optim.lr_scheduler import LambdaLR

    w = warmup_steps
    return LambdaLR(optimizer, lambda t: min((t + 1) / w, math.sqrt(w / (t + 1))))


def sgdr(
    optimizer: Any,
    steps: int,
    base_lr: float,
    period: Steps | None = None,
    period_mult: Steps = 1,
    min_factor: Factor = 0.0,
) -> Any:
    """Cosine annealing with warm restarts every ``period`` steps (default a quarter of the run)."""
    from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts

    return CosineAnnealingWarmRestarts(
        optimizer, T_0=period or max(steps // 4, 1), T_mult=period_mult, eta_min=min_factor * base_lr
    )


def cyclic(
    optimizer: Any,
    steps: int,
    base_lr: float,
    mode: Literal["triangular", "triangular2"] = "triangular",
    step_size_up: Steps | None = None,
    min_factor: Factor = 0.1,
) -> Any:
    """Cyclic lr between min_factor · lr and lr (the swept rate is the peak)."""
    from torch.optim.lr_scheduler import CyclicLR

    return CyclicLR(
        optimizer,
        base_lr=min_factor * base_lr,
        max_lr=base_lr,
        step_size_up=step_size_up or max(steps // 8, 1),
        mode=mode,
        cycle_momentum=False,
    )


def one_cycle(
    optimizer: Any,
    steps: int,
    base_lr: float,
    pct_start: Annotated[Float, Field(gt=0, lt=1)] = 0.3,
    div_factor: Positive = 25.0,
    final_div_factor: Positive = 1e4,
    anneal_strategy: Literal["cos", "linear"] = "cos",
) -> Any:
    """One-cycle: warm up to the swept rate, then anneal far below it. Momentum is not cycled."""
    from torch.optim.lr_scheduler import OneCycleLR

    return OneCycleLR(
        optimizer,
        max_lr=base_lr,
        total_steps=steps,
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        anneal_strategy=anneal_strategy,
        cycle_momentum=False,
    )


def exponential(
    optimizer: Any, steps: int, base_lr: float, start_factor: Annotated[Float, Field(gt=0, le=1)] = 1e-8
) -> Any:
    """From start_factor · base up to base, the rate multiplied by the same factor every step:
    the range test's ramp (a ``LambdaLR``: torch's ExponentialLR cannot end on a given rate)."""
    from torch.optim.lr_scheduler import LambdaLR

    last = max(steps - 1, 1)
    return LambdaLR(optimizer, lambda t: start_factor ** (1 - min(t, last) / last))


SCHEDULES: dict[str, ScheduleBuilder] = {
    "constant": constant,
    "warmup": warmup,
    "cosine": cosine,
    "linear": linear,
    "inverse_sqrt": inverse_sqrt,
    "sgdr": sgdr,
    "cyclic": cyclic,
    "one_cycle": one_cycle,
    "exponential": exponential,
}


def schedule_args(name: str) -> list[str]:
    params = list(inspect.signature(SCHEDULES[name]).parameters)
    return [p for p in params if p not in ("optimizer", "steps", "base_lr")]


@functools.cache
def _arguments(name: str) -> Any:
    """A pydantic model of the schedule's keyword arguments, from its builder's signature."""
    params = inspect.signature(SCHEDULES[name], eval_str=True).parameters
    fields = {arg: (params[arg].annotation, params[arg].default) for arg in schedule_args(name)}
    return create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)


def check_schedule(name: str, kwargs: dict[str, Any], build: bool = True) -> None:
    """Raise ValueError (a config error at the schedule's key path) for a bad name or argument;
    a bad argument is a :class:`ConfigKeyError` naming it."""
    if name not in SCHEDULES:
        raise ValueError(
            f"unknown schedule '{name}'{did_you_mean(name, tuple(SCHEDULES))}; expected one of {', '.join(SCHEDULES)}"
        )
    accepted = schedule_args(name)
    for key in kwargs:
        if key not in accepted:
            takes = ", ".join(accepted) or "no arguments"
            raise ConfigKeyError(
                key, f"schedule '{name}' has no argument '{key}'{did_you_mean(key, accepted)}; it takes {takes}"
            )
    try:
        _arguments(name).model_validate(kwargs)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigKeyError(str(first["loc"][0]), f"{message} (got {short_repr(first['input'])})") from None
    if not build:
        return
    try:
        lr_table(name, kwargs, base_lr=1.0, steps=4)
    except (ValueError, TypeError, ZeroDivisionError) as exc:
        raise ValueError(f"schedule '{name}' rejected these arguments: {exc}") from None


def lr_table(name: str, kwargs: dict[str, Any], base_lr: float, steps: int, prepend_warmup: int = 0) -> np.ndarray:
    """The learning rate of every step, from the torch scheduler stepped ``steps`` times.

    ``prepend_warmup > 0`` puts a linear warmup in front of the schedule (docs/contract.md, "Detection rules"): the
    table then has ``prepend_warmup + steps`` entries, a ``LinearLR`` ramp from 0 up to the
    schedule's first rate (``base_lr`` for all but one_cycle and cyclic), then the schedule
    unchanged. Joining the two tables rather than nesting schedulers works for every
    schedule, including one that is itself a ``SequentialLR``.
    """
    table = _step_through(lambda opt: SCHEDULES[name](opt, steps, base_lr, **kwargs), base_lr, steps)
    if prepend_warmup > 0:
        ramp = _step_through(lambda opt: _ramp(opt, prepend_warmup), float(table[0]), prepend_warmup)
        table = np.concatenate([ramp, table])
    return table


def _step_through(make: Callable[[Any], Any], lr: float, steps: int) -> np.ndarray:
    import warnings

    import torch

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make(optimizer)
    table = np.empty(steps, dtype=np.float64)
    with warnings.catch_warnings():  # the throw-away optimizer never steps; torch would warn
        warnings.simplefilter("ignore", UserWarning)
        for t in range(steps):
            table[t] = optimizer.param_groups[0]["lr"]
            scheduler.step()
    return table
