"""What both training loops share: the objective, evaluation, data, and judging a finished trial.

There are two ways to run a training step: one trial at a time (``sequential.py``, plain
``torch.optim`` on the model) and a batch of trials as one computation (``vectorized.py``,
``vmap`` over stacked weights). Everything they must agree on lives here, so a trial run
either way is the same training, judged by the same rules.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stabsweep.analysis.rules import judge, smoothed
from stabsweep.optim.schedules import lr_table
from stabsweep.records import StepLog, TrialResult, TrialSpec, TrialStatus
from stabsweep.workloads.base import Workload

CPU_SYNC_EVERY = 1  # a host read of a CPU tensor costs next to nothing: judge every step
GPU_SYNC_EVERY = 32  # on a GPU, read step metrics in chunks to avoid a stall per step


def lr_schedule(spec: TrialSpec) -> np.ndarray:
    """The trial's learning rate at every step: its schedule, after its warmup ramp."""
    return lr_table(
        spec.schedule.name,
        spec.schedule.kwargs,
        spec.lr,
        spec.steps - spec.warmup_steps,
        prepend_warmup=spec.warmup_steps,
    )


def training_loss(workload: Workload, model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """The workload's objective: ``loss(model, batch)``, or ``loss_fn(model(inputs), targets)``."""
    if workload.loss is not None:
        return workload.loss(model, batch)
    inputs, targets = batch
    return workload.loss_fn(model(inputs), targets)


class EvalTerms:
    """One eval batch's contribution: summed loss and, for classifiers, correct predictions.

    A function of tensors only, so the vectorized engine can run it under ``vmap``; what it
    learns about the outputs' shape (a classifier? how many classes?) it keeps as attributes.
    """

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.classified = workload.loss is None
        self.num_classes = workload.num_classes

    def __call__(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        n = batch_size_of(batch)
        if self.workload.loss is not None:
            loss = self.workload.loss(model, batch)
            return loss * n, torch.zeros_like(loss)
        inputs, targets = batch
        outputs = model(inputs)
        loss = self.workload.loss_fn(outputs, targets)
        self.classified = self.classified and outputs.ndim == 2 and not targets.is_floating_point()
        if not self.classified:
            return loss * n, torch.zeros_like(loss)
        self.num_classes = self.num_classes or outputs.shape[1]
        return loss * n, (outputs.argmax(1) == targets).sum().to(loss.dtype)


@contextmanager
def evaluating(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode without gradients, leaving the random state as training left it.

    Evaluating must not change training: a DataLoader without its own generator draws a seed
    from the global RNG every time it is iterated, so without the fork every eval would shift
    every later dropout mask, and a trial would depend on ``eval_every`` and differ from the
    same training run without evals.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices, device_type="cuda"):
        model.eval()
        try:
            yield
        finally:
            model.train()


def eval_record(step: int, total: Any, correct: Any, count: int, classified: bool) -> dict[str, float]:
    record = {"step": step, "eval_loss": float(total) / max(count, 1)}
    if classified and count:
        record["eval_accuracy"] = float(correct) / count
    return record


def batch_size_of(batch: Any) -> int:
    return len(batch[0]) if isinstance(batch, (list, tuple)) else 1


def batches_forever(data: Any) -> Iterator[Any]:
    """Re-iterate ``train_data`` as epochs; an empty epoch would loop forever, so it raises."""
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("train_data yielded no batch")


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def place_data(data: Any, device: torch.device) -> bool:
    """Move in-memory data to the device once; True when batches need no per-step copy."""
    if data is not None and callable(getattr(data, "to", None)) and not isinstance(data, torch.nn.Module):
        data.to(device)
        return True
    return False


def trial_result(
    spec: TrialSpec,
    detect: Any,
    num_classes: int | None,
    start: float,
    lrs: np.ndarray,
    losses: np.ndarray,
    norms: np.ndarray,
    thresholds: np.ndarray,
    evals: list[dict[str, float]],
) -> TrialResult:
    """Judge a trial's records (cut at the steps it ran) and package them as its result."""
    steps_run = losses.size
    evals = [e for e in evals if e["step"] <= steps_run]  # evals past a diverged step of a chunk
    verdict = judge(losses, detect, num_classes)
    eval_losses = [e["eval_loss"] for e in evals if math.isfinite(e["eval_loss"])]
    return TrialResult(
        spec,
        verdict.status,
        verdict.reason,
        steps_run=int(steps_run),
        wall_seconds=time.perf_counter() - start,
        best_eval_loss=min(eval_losses) if eval_losses else None,
        final_train_loss=float(smoothed(losses, detect.smoothing)[-1]) if steps_run else None,
        diverged_step=verdict.diverged_step,
        steps=step_log(lrs, losses, norms, thresholds),
        evals=evals,
    )


def step_log(lrs: np.ndarray, losses: np.ndarray, norms: np.ndarray, thresholds: np.ndarray) -> StepLog:
    """The per-step records of the steps that ran (``losses`` says how many)."""
    thresholds = np.where(np.isfinite(thresholds), thresholds, np.nan)  # inf: no clipping in force
    return StepLog(
        lr=lrs[: losses.size].copy(),
        train_loss=losses,
        grad_norm=norms,
        clip_threshold=thresholds,
        clipped=norms > np.nan_to_num(thresholds, nan=np.inf),
    )


def failed_result(spec: TrialSpec, exc: BaseException, start: float, device: torch.device) -> TrialResult:
    """The FAILED record of a trial that raised, naming where."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return TrialResult(
        spec,
        TrialStatus.FAILED,
        f"raised {type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}",
        steps_run=0,
        wall_seconds=time.perf_counter() - start,
        error=f"{type(exc).__name__}: {exc}",
    )


def read_records(records: list[torch.Tensor]) -> np.ndarray:
    """Per-step 0-dim records as one host array, in one copy."""
    return torch.stack(records).cpu().numpy()
