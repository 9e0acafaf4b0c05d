"""What vmap can and cannot batch, and how the vectorized engine tells the user.

A model that cannot run under ``vmap`` is recognised before training where possible
(:func:`why_not_vectorizable`) and otherwise when vmap refuses it (:class:`NotVectorizable`,
and vmap's own errors, sorted in ``engine/runner.py``). An op vmap has no batching rule for
but can loop over stays in the batch: torch warns once per op and call site, in a raw form;
the engine notes the ops instead and says so in one line.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from torch import nn


class NotVectorizable(Exception):
    """The model cannot run under vmap; the message says why, in one line."""


# vmap's warning for an op it has no batching rule for and runs trial by trial instead.
_LOOPED_OP_WARNING = "There is a performance drop because we have not yet implemented the batching rule"
_LOOPED_OP = re.compile(re.escape(_LOOPED_OP_WARNING) + r" for (\S+?)\. ")


@contextmanager
def quiet_looped_ops() -> Iterator[None]:
    """Silence vmap's warning for ops it loops over (already noted at the first step), for
    the calls inside only: the filter is removed on the way out."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_LOOPED_OP_WARNING, category=UserWarning)
        yield


@contextmanager
def noting_looped_ops(looped: set[str]) -> Iterator[None]:
    """Collect the ops vmap loops over into ``looped`` instead of letting torch print its raw
    warning (a file path and a request to file an issue, once per op and call site); the
    engine says it in one line. Any other warning is passed on as it was raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        found = _LOOPED_OP.match(str(warning.message))
        if found:
            looped.add(found.group(1))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def why_not_vectorizable(model: nn.Module, precision: str = "fp32") -> str | None:
    """A reason known before running: trainable weights of several dtypes, which one row of
    weights per trial cannot hold, or half-precision weights, whose batched step would not
    match the trial's own. (BatchNorm is batched: see :func:`running_buffers`.)"""
    dtypes = {str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad}
    if len(dtypes) > 1:
        return f"its trainable parameters mix dtypes ({', '.join(sorted(dtypes))})"
    if precision == "fp16":
        return (
            "train.precision fp16 scales the loss and skips the steps whose gradients overflow, per trial; "
            "torch.optim's state, shared by the trials of a batch, cannot skip a step for one trial only"
        )
    half = dtypes & {"float16", "bfloat16"}
    if half:
        return (
            f"its trainable parameters are {half.pop()}: the batched step (torch.optim's step at lr = 1, then each "
            "trial's share of it) rounds differently in half precision from torch.optim's step at each trial's rate"
        )
    return None


def running_buffers(model: nn.Module) -> list[str]:
    """The buffers a training step updates in place: BatchNorm's (1d, 2d, 3d, SyncBatchNorm on
    one device, which is BatchNorm there) and InstanceNorm's running mean and variance and
    ``num_batches_tracked``, when the module tracks running statistics. In a batch each trial
    gets its own row of them, as of its parameters, so each keeps its own statistics (an
    in-place update of a buffer shared by the trials is what vmap cannot batch)."""
    norms = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
    names = []
    for prefix, module in model.named_modules():
        if isinstance(module, norms) and module.track_running_stats:
            names += [f"{prefix}.{name}" if prefix else name for name, _ in module.named_buffers(recurse=False)]
    return names


class Bound(nn.Module):
    """Runs any function of the model (the training loss, eval terms) under ``functional_call``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[nn.Module, Any], Any], batch: Any) -> Any:
        return fn(self.model, batch)


def batchable_attention(device: Any) -> Any:
    """A context in which a batch's attention is batched by vmap, not looped over.

    On the CPU, ``scaled_dot_product_attention`` picks a fused kernel that has no vmap
    batching rule, so a batch runs it trial by trial. Its math formulation (matmuls and a
    softmax) gives the same values (to float rounding) and vmap batches it: the batch asks for
    it. A CUDA device keeps its own kernels (its flash and memory-efficient kernels have
    batching rules).
    """
    if getattr(device, "type", str(device)) != "cpu":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)
