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
class BatchScan:
    """Each training batch's loss at initialisation, in data order (one forward pass each)."""

    losses: list[float]  # one per batch scanned, in order: index i is batch i of epoch 0
    total: int | None  # batches in an epoch, when the data has a length
    seconds: float
    stopped: str | None = None  # why the scan ended before the epoch did (a time budget)


def scan_batches(workload: Workload, device: torch.device, budget_s: float, most: int) -> BatchScan:
    """The loss of every training batch of the first epoch at initialisation, as training
    computes it (training mode) but without gradients (no backward, no update: the untrained
    model's view of the data), for at most ``budget_s`` seconds or ``most`` batches. The model
    is a fresh one, used for nothing else (BatchNorm's running statistics move)."""
    import time

    from stabsweep.training.common import to_device

    start = time.perf_counter()
    try:
        total = len(workload.train_data)
    except TypeError:
        total = None
    losses, stopped = [], None
    model = workload.model.train()
    with torch.no_grad(), torch.random.fork_rng():
        for index, batch in enumerate(workload.train_data):
            losses.append(float(training_loss(workload, model, to_device(batch, device))))
            if index + 1 >= most:
                stopped = f"the first {most} batches (doctor.scan_batches)"
                break
            if time.perf_counter() - start > budget_s:
                stopped = f"{budget_s:g} s of scanning (doctor.scan_seconds)"
                break
    return BatchScan(losses, total, time.perf_counter() - start, stopped if total != len(losses) else None)


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


def targets_of(batch: Any) -> torch.Tensor | None:
    """The integer targets of a batch: the second of an ``(inputs, targets)`` pair, or a
    dict's ``labels`` (a HuggingFace batch); None when there are none to read."""
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        targets = batch[1]
    elif isinstance(batch, dict):
        targets = batch.get("labels")
    else:
        return None
    if isinstance(targets, torch.Tensor) and not targets.is_floating_point() and targets.dtype is not torch.bool:
        return targets
    return None


def label_range(data: Any, classes: int, ignore_index: int | None) -> tuple[int, int, str | None]:
    """The smallest and largest target over the data, and the first one outside [0, classes)."""
    low, high, bad = math.inf, -math.inf, None
    for index, batch in enumerate(data):
        targets = targets_of(batch)
        if targets is None:
            continue
        valid = targets if ignore_index is None else targets[targets != ignore_index]
        if valid.numel():
            low, high = min(low, int(valid.min())), max(high, int(valid.max()))
        wrong = (valid < 0) | (valid >= classes)
        if bad is None and wrong.any():
            bad = f"batch {index}: target {int(valid[wrong][0])}"
    if low == math.inf:  # no integer targets anywhere
        return 0, 0, None
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
    # A tensor shared by two modules (tied input and output embeddings) has one name in
    # named_parameters(), the first; every module that holds it is checked under that name.
    names = {id(p): n for n, p in workload.model.named_parameters()}
    out = []
    for name, module in _one_module_per_type(workload.model):
        parameter = next(p for p in module.parameters(recurse=False) if p.requires_grad and p.is_floating_point())
        full_name = names[id(parameter)]
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
    bound, objective = Bound(model), partial(training_loss, workload)

    def loss_of(values: torch.Tensor) -> torch.Tensor:
        changed = base.reshape(-1).index_put((index,), values).reshape(base.shape)
        return torch.func.functional_call(bound, {f"model.{name}": changed}, (objective, batch))

    values = base.reshape(-1)[index].clone().requires_grad_()
    with torch.no_grad():  # a loss computed in a lower precision (outputs.float()) limits what can be checked
        loss_dtype = loss_of(values.detach()).dtype
    exact = dtype == loss_dtype == torch.float64
    tolerances = {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-3} if exact else {"eps": 1e-3, "atol": 1e-2, "rtol": 5e-2}
    try:
        with warnings.catch_warnings():  # float32 is the fallback, on purpose: no warning that it is not float64
            warnings.filterwarnings("ignore", message="Input #0 requires gradient and is not a double")
            torch.autograd.gradcheck(loss_of, (values,), raise_exception=True, **tolerances)
    except GradcheckError as exc:
        return False, " ".join(str(exc).split())[:300]
    precision = str(dtype).removeprefix("torch.")
    if loss_dtype != dtype:
        precision += f", the loss in {str(loss_dtype).removeprefix('torch.')}"
    limits = f"eps {tolerances['eps']:g}, atol {tolerances['atol']:g}, rtol {tolerances['rtol']:g}"
    return True, f"gradcheck passed ({samples} elements, {precision}, {limits})"


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
