"""Measurements ``stabsweep doctor`` takes of a workload before any sweep: its data, its labels,
its loss at init, its gradients against finite differences, its dead units.

Each function measures and returns numbers; whether they pass is decided in
``analysis/doctor.py``. The training runs (overfit one batch, the first steps' update ratios)
go through the trial loop itself (``training/sequential.py``).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.autograd.gradcheck import GradcheckError

from stabsweep.training.common import classifies, training_loss
from stabsweep.training.vmap_support import Bound
from stabsweep.workloads.base import Workload

RELU_FAMILY = (nn.ReLU, nn.ReLU6)  # units that can die: exactly zero for every input


def first_bad_value(data: Any) -> str | None:
    """Where the first NaN or inf of ``data`` is (batch and position), or None: one pass over it."""
    for index, batch in enumerate(data):
        for part, tensor in _tensors(batch):
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                position = tuple(torch.nonzero(~torch.isfinite(tensor))[0].tolist())
                value = tensor[position].item()
                return f"batch {index}, {part}{list(position)} = {value}"
    return None


def _tensors(batch: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    if isinstance(batch, torch.Tensor):
        return [(prefix or "batch", batch)]
    if isinstance(batch, (list, tuple)):
        pair = len(batch) == 2 and not prefix
        names = ("inputs", "targets") if pair else [f"{prefix}[{i}]" for i in range(len(batch))]
        return [t for name, item in zip(names, batch, strict=False) for t in _tensors(item, name)]
    if isinstance(batch, dict):
        return [t for key, item in batch.items() for t in _tensors(item, f"{prefix}[{key!r}]")]
    return []


def first_batch(data: Any) -> Any:
    return next(iter(data))


@dataclass
class Outputs:
    """What one forward pass on a batch says about the workload."""

    loss: float
    classes: int | None  # the output width when the shapes make it a classifier
    reference: float | None  # ln C for a classifier; the mean predictor's loss for a regressor
    reference_name: str | None


def forward_once(workload: Workload, batch: Any) -> tuple[int | None, Any]:
    """The number of classes the outputs show (None: not a classifier by the shapes), and a
    function giving the loss at init and a know-nothing model's loss (a separate step: with
    labels out of range, the loss raises, and the labels check must run first)."""
    model = workload.model
    if workload.loss is not None:
        classes = workload.num_classes
    else:
        inputs, targets = batch
        with torch.no_grad(), torch.random.fork_rng():
            outputs = model(inputs)
        classes = (workload.num_classes or int(outputs.shape[-1])) if classifies(outputs, targets) else None

    def loss_at_init() -> Outputs:
        model.train()
        with torch.no_grad(), torch.random.fork_rng():
            loss = float(training_loss(workload, model, batch))
        if classes:
            return Outputs(loss, classes, math.log(classes), "ln C")
        if workload.loss is None and targets.is_floating_point() and outputs.shape == targets.shape:
            mean = targets.mean().expand_as(targets)
            return Outputs(loss, None, float(workload.loss_fn(mean, targets)), "the loss of predicting the target mean")
        return Outputs(loss, None, None, None)

    return classes, loss_at_init


def label_range(data: Any, classes: int, ignore_index: int | None) -> tuple[int, int, str | None]:
    """The smallest and largest target over the data, and the first one outside [0, classes)."""
    low, high, bad = math.inf, -math.inf, None
    for index, batch in enumerate(data):
        targets = batch[1]
        valid = targets if ignore_index is None else targets[targets != ignore_index]
        if valid.numel():
            low, high = min(low, int(valid.min())), max(high, int(valid.max()))
        wrong = (valid < 0) | (valid >= classes)
        if bad is None and wrong.any():
            bad = f"batch {index}: target {int(valid[wrong][0])}"
    return int(low), int(high), bad


def dead_units(model: nn.Module, batch: Any, workload: Workload) -> dict[str, float]:
    """Per ReLU-family layer: the share of its units that are zero for every example of ``batch``
    (a unit: a feature of a [N, F] or [N, T, F] output, a channel of a [N, C, H, W] one)."""
    shares: dict[str, float] = {}
    hooks = []

    def record(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            unit_dim = 1 if output.ndim in (2, 4) else output.ndim - 1
            alive = (output > 0).transpose(0, unit_dim).reshape(output.shape[unit_dim], -1).any(dim=1)
            shares[name] = float(1 - alive.float().mean())

        return hook

    for name, module in model.named_modules():
        if isinstance(module, RELU_FAMILY):
            hooks.append(module.register_forward_hook(record(name or type(module).__name__)))
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng():
            training_loss(workload, model, batch)
    finally:
        model.train()
        for hook in hooks:
            hook.remove()
    return shares


@dataclass
class GradientCheck:
    module: str  # the module's name in the model
    kind: str  # its type
    parameter: str
    passed: bool
    detail: str  # gradcheck's tolerances, or its report of the mismatch


def gradient_check(workload: Workload, batch: Any, samples: int) -> list[GradientCheck]:
    """Autograd's gradients against central finite differences (``torch.autograd.gradcheck``),
    on ``samples`` elements of one parameter of one module of every type the model has, on a
    two-example batch in eval mode (no dropout), in float64. A model that cannot run in float64
    is checked in float32 with loose tolerances."""
    small = _first_examples(batch, 2)
    out = []
    for name, module in _one_module_per_type(workload.model):
        parameter = next(p for p in module.parameters(recurse=False) if p.requires_grad and p.is_floating_point())
        parameter_name = next(n for n, p in module.named_parameters(recurse=False) if p is parameter)
        full_name = f"{name}.{parameter_name}" if name else parameter_name
        try:
            passed, detail = _check_one(workload, small, full_name, samples, torch.float64)
        except Exception:  # noqa: BLE001 - the model may not run in float64: try float32
            passed, detail = _check_one(workload, small, full_name, samples, torch.float32)
        out.append(GradientCheck(name or "model", type(module).__name__, full_name, passed, detail))
    return out


def _check_one(workload: Workload, batch: Any, name: str, samples: int, dtype: torch.dtype) -> tuple[bool, str]:
    model = copy.deepcopy(workload.model).to(dtype).eval()
    batch = _to_dtype(batch, dtype)
    weights = dict(model.named_parameters())
    base = weights[name].detach()
    index = torch.randperm(base.numel(), generator=torch.Generator().manual_seed(0))[:samples]
    loose = dtype != torch.float64
    tolerances = {"eps": 1e-3, "atol": 1e-2, "rtol": 5e-2} if loose else {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-3}

    bound, objective = Bound(model), partial(training_loss, workload)

    def loss_of(values: torch.Tensor) -> torch.Tensor:
        changed = base.reshape(-1).index_put((index,), values).reshape(base.shape)
        return torch.func.functional_call(bound, {f"model.{name}": changed}, (objective, batch))

    values = base.reshape(-1)[index].clone().requires_grad_()
    try:
        with warnings.catch_warnings():  # float32 is the fallback, on purpose: no warning that it is not float64
            warnings.filterwarnings("ignore", message="Input #0 requires gradient and is not a double")
            torch.autograd.gradcheck(loss_of, (values,), raise_exception=True, **tolerances)
    except GradcheckError as exc:
        return False, " ".join(str(exc).split())[:300]
    where = f"{samples} elements, {str(dtype).removeprefix('torch.')}"
    limits = f"eps {tolerances['eps']:g}, atol {tolerances['atol']:g}, rtol {tolerances['rtol']:g}"
    return True, f"gradcheck passed ({where}, {limits})"


def _one_module_per_type(model: nn.Module) -> list[tuple[str, nn.Module]]:
    seen, out = set(), []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad and p.is_floating_point()]
        if own and type(module) not in seen:
            seen.add(type(module))
            out.append((name, module))
    return out


def _first_examples(batch: Any, count: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[:count]
    if isinstance(batch, (list, tuple)):
        return type(batch)(_first_examples(b, count) for b in batch)
    if isinstance(batch, dict):
        return {k: _first_examples(v, count) for k, v in batch.items()}
    return batch


def _to_dtype(batch: Any, dtype: torch.dtype) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(dtype) if batch.is_floating_point() else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_dtype(b, dtype) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_dtype(v, dtype) for k, v in batch.items()}
    return batch


class RepeatBatch:
    """One fixed batch as every batch of every epoch: the data of "overfit one batch"."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch

    def __iter__(self) -> Any:
        yield self.batch
