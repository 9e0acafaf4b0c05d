"""One trial, start to finish: build the workload, train, record every step, judge.

The loop is the hot path. On the CPU each step's loss is read at once (cheaper than
buffering it); on a GPU per-step metrics go into preallocated tensors on the device and reach
the host every ``GPU_SYNC_EVERY`` steps. The learning rate comes from a table computed once,
and the clipping threshold is decided on the device. The divergence rule runs on each chunk, so
a diverging trial stops at the first bad step (on a GPU, at most one chunk later, with its
records cut at the bad step).
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.nn.utils import clip_grads_with_norm_

from stabsweep.analysis.rules import divergence_step, judge, smoothed
from stabsweep.config.schema import DetectConfig, OptimizerConfig
from stabsweep.engine.trial import StepLog, TrialResult, TrialSpec, TrialStatus
from stabsweep.training.clipping import build_clipper
from stabsweep.training.gradients import FlatGrads
from stabsweep.training.optimizers import build_optimizer
from stabsweep.training.schedules import lr_table
from stabsweep.workloads.base import Workload

CPU_SYNC_EVERY = 1  # a host read of a CPU tensor costs next to nothing: judge every step
GPU_SYNC_EVERY = 32  # on a GPU, read step metrics in chunks to avoid a stall per step


def train_trial(
    spec: TrialSpec,
    factory: Callable[[int], Workload],
    optimizer: OptimizerConfig,
    detect: DetectConfig,
    device: torch.device,
) -> TrialResult:
    """Run one trial; an exception inside it is a FAILED result, never a crash of the sweep."""
    start = time.perf_counter()
    try:
        return _Trial(spec, factory(spec.seed), optimizer, detect, device).run(start)
    except Exception as exc:  # noqa: BLE001 - a trial that raises is a result (DESIGN §5)
        return failed_result(spec, exc, start, device)


def failed_result(spec: TrialSpec, exc: Exception, start: float, device: torch.device) -> TrialResult:
    """The FAILED record of a trial that raised, naming where."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return TrialResult(
        spec,
        TrialStatus.FAILED,
        f"raised {type(exc).__name__} at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}",
        steps_run=0,
        wall_seconds=time.perf_counter() - start,
        error=f"{type(exc).__name__}: {exc}",
    )


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


def trial_result(
    spec: TrialSpec,
    detect: DetectConfig,
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
    thresholds = np.where(np.isfinite(thresholds), thresholds, np.nan)  # inf: no clipping in force
    verdict = judge(losses, detect, num_classes)
    eval_losses = [e["eval_loss"] for e in evals if math.isfinite(e["eval_loss"])]
    log = StepLog(
        lr=lrs[:steps_run].copy(),
        train_loss=losses,
        grad_norm=norms,
        clip_threshold=thresholds,
        clipped=norms > np.nan_to_num(thresholds, nan=np.inf),
    )
    return TrialResult(
        spec,
        verdict.status,
        verdict.reason,
        steps_run=int(steps_run),
        wall_seconds=time.perf_counter() - start,
        best_eval_loss=min(eval_losses) if eval_losses else None,
        final_train_loss=float(smoothed(losses, detect.smoothing)[-1]) if steps_run else None,
        diverged_step=verdict.diverged_step,
        steps=log,
        evals=evals,
    )


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


def _read(records: list[torch.Tensor]) -> np.ndarray:
    """Per-step 0-dim records as one host array, in one copy."""
    return torch.stack(records).cpu().numpy()


class _Trial:
    def __init__(
        self,
        spec: TrialSpec,
        workload: Workload,
        optimizer: OptimizerConfig,
        detect: DetectConfig,
        device: torch.device,
    ) -> None:
        self.spec, self.workload, self.detect, self.device = spec, workload, detect, device
        self.model = workload.model.to(device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.lrs = lr_schedule(spec)
        self.optimizer = build_optimizer(optimizer.name, optimizer.kwargs, self.params, float(self.lrs[0]))
        self.clipper = build_clipper([spec.clip], device)
        self.eval_terms = EvalTerms(workload)
        self.data_on_device = place_data(workload.train_data, device)
        self.eval_on_device = place_data(workload.eval_data, device)
        self.sync_every = CPU_SYNC_EVERY if device.type == "cpu" else GPU_SYNC_EVERY

    def run(self, start: float) -> TrialResult:
        grads = FlatGrads(self.params)
        try:
            return self._train(start, grads)
        finally:
            grads.close()

    def _train(self, start: float, grads: FlatGrads) -> TrialResult:
        steps, device = self.spec.steps, self.device
        # Per-step records stay 0-dim tensors on the device, appended to lists and stacked
        # when read: a store into a preallocated tensor (``buf[step] = x``) would be an
        # indexing op per step, and on a GPU a kernel launch per record and step.
        step_losses: list[torch.Tensor] = []
        norms: list[torch.Tensor] = []
        thresholds: list[torch.Tensor] = []
        losses = np.full(steps, np.nan)
        group = self.optimizer.param_groups[0]
        lrs = self.lrs.tolist()  # Python floats once, not a numpy scalar conversion per step
        batches = batches_forever(self.workload.train_data)
        evals = [self.evaluate(0)]
        diverged_at: int | None = None
        synced = 0
        # Every step on the CPU, where reading a loss costs less than buffering it; in chunks
        # on a GPU, where each read would stall the device.
        read_now = self.sync_every == 1
        self.model.train()
        for step in range(steps):
            group["lr"] = lrs[step]
            batch = next(batches)
            if not self.data_on_device:
                batch = to_device(batch, device)
            loss = training_loss(self.workload, self.model, batch)
            grads.zero()
            loss.backward()
            norm = grads.norm()
            if read_now:
                losses[step] = loss.item()
            else:
                step_losses.append(loss.detach())
            norms.append(norm)
            if self.clipper is not None:
                threshold = self.clipper.threshold(norm.reshape(1), step)[0]
                thresholds.append(threshold)
                clip_grads_with_norm_(self.params, threshold, norm)
            self.optimizer.step()

            done = step + 1
            if read_now:  # one fresh loss: plain floats beat numpy calls
                value = losses[step]
                if not math.isfinite(value) or value > self.detect.divergence_factor * losses[0]:
                    diverged_at = done
                    break
            elif done - synced >= self.sync_every or done == steps:
                losses[synced:done] = torch.stack(step_losses[synced:done]).cpu().numpy()
                diverged_at = divergence_step(
                    losses[synced:done], losses[0], self.detect.divergence_factor, offset=synced
                )
                synced = done
                if diverged_at is not None:
                    break
            if done % self.spec.eval_every == 0 or done == steps:
                evals.append(self.evaluate(done))

        steps_run = diverged_at or steps
        return trial_result(
            self.spec,
            self.detect,
            self.eval_terms.num_classes,
            start,
            self.lrs,
            losses[:steps_run],
            _read(norms[:steps_run]),
            _read(thresholds[:steps_run]) if thresholds else np.full(steps_run, np.nan),
            evals,
        )

    def evaluate(self, step: int) -> dict[str, float]:
        """Mean eval loss over ``eval_data`` (and accuracy for classifiers); NaN without eval data."""
        data = self.workload.eval_data
        if data is None:
            return {"step": step, "eval_loss": math.nan}
        total = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        count = 0
        with evaluating(self.model, self.device):
            for batch in data:
                if not self.eval_on_device:
                    batch = to_device(batch, self.device)
                loss_sum, right = self.eval_terms(self.model, batch)
                total += loss_sum
                correct += right
                count += batch_size_of(batch)
        return eval_record(step, total, correct, count, self.eval_terms.classified)
