"""What both training loops share: the objective, evaluation, data, and judging a finished trial.

There are two ways to run a training step: one trial at a time (``sequential.py``, plain
``torch.optim`` on the model) and a batch of trials as one computation (``vectorized.py``,
``vmap`` over stacked weights). Everything they must agree on lives here, so a trial run
either way is the same training, judged by the same rules.
"""

from __future__ import annotations

import math
import random
import sysconfig
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stabsweep.analysis.rules import judge, smoothed
from stabsweep.errors import raised_in_user_code, user_code
from stabsweep.optim.schedules import lr_table
from stabsweep.records import StepLog, TrialResult, TrialSpec, TrialStatus
from stabsweep.workloads.base import Workload

CPU_SYNC_EVERY = 1  # a host read of a CPU tensor costs next to nothing: judge every step
GPU_SYNC_EVERY = 32  # on a GPU, read step metrics in chunks to avoid a stall per step
PROGRESS_EVERY_S = 0.25  # how often a loop reports its step to a progress display: a clock read per step

# progress(step, length, running): the loop's step, its length and the trials still running
Progress = Callable[[int, int, int], None]


def lr_schedule(spec: TrialSpec) -> np.ndarray:
    """The trial's learning rate at every step: its schedule, after its warmup ramp. A trial
    that is the start of a longer run (``run_steps``) takes the start of that run's table."""
    length = spec.run_steps or spec.steps
    table = lr_table(
        spec.schedule.name,
        spec.schedule.kwargs,
        spec.lr,
        length - spec.warmup_steps,
        prepend_warmup=spec.warmup_steps,
    )
    return table[: spec.steps]


PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}  # train.precision -> autocast's dtype


def autocast(device: torch.device, precision: str) -> Any:
    """The forward's mixed precision, as ``torch.amp`` runs it: ``torch.autocast`` to bf16 or
    fp16 on the trial's device (fp16 also takes a gradient scaler: ``grad_scaler``); nothing
    for fp32. Weights, gradients, the optimizer and every per-step record stay float32."""
    if precision not in PRECISIONS:
        return nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """fp16's loss scaling (``torch.amp.GradScaler``): a step whose unscaled gradients are not
    finite is skipped and the scale halves; None for the other precisions."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def training_loss(workload: Workload, model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """The workload's objective: ``loss(model, batch)``, or ``loss_fn(model(inputs), targets)``."""
    with user_code():
        if workload.loss is not None:
            return workload.loss(model, batch)
        inputs, targets = batch
        return workload.loss_fn(model(inputs), targets)


def classifies(outputs: Any, targets: Any) -> bool:
    """Whether accuracy is well defined: integer targets, and float outputs with one more (last)
    dimension holding at least two class scores (``[N, C]`` for ``[N]``, ``[N, T, V]`` for ``[N, T]``)."""
    return (
        isinstance(outputs, torch.Tensor)
        and isinstance(targets, torch.Tensor)
        and outputs.is_floating_point()
        and not targets.is_floating_point()
        and targets.dtype is not torch.bool
        and outputs.ndim == targets.ndim + 1
        and outputs.shape[:-1] == targets.shape
        and outputs.shape[-1] >= 2
    )


class EvalTerms:
    """One eval batch's sums: the loss times the batch size, and for classifiers the correct
    and the labelled predictions, and each workload metric times the batch size.

    A function of tensors only, so the vectorized engine can run it under ``vmap``. What it
    learns at the first batch (a classifier? how many classes? which metrics work?) it keeps
    as attributes; a metric that raises is dropped with a note, never failing the trial.
    """

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.accuracy = workload.loss is None and workload.accuracy
        self.metrics = dict(workload.metrics or {})
        self.num_classes = workload.num_classes
        self.notes: list[str] = []

    def __call__(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        with user_code():
            return self._sums(model, batch)

    def _sums(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        n = batch_size_of(batch)
        if self.workload.loss is not None:
            return {"loss": self.workload.loss(model, batch).float() * n}  # summed in float32 whatever the precision
        inputs, targets = batch
        outputs = model(inputs)
        loss = self.workload.loss_fn(outputs, targets).float()
        sums = {"loss": loss * n}
        if self.accuracy and classifies(outputs, targets):
            self.num_classes = self.num_classes or int(outputs.shape[-1])
            labelled = targets >= 0
            sums["correct"] = ((outputs.argmax(-1) == targets) & labelled).sum().to(loss.dtype)
            sums["labelled"] = labelled.sum().to(loss.dtype)
        else:
            self.accuracy = False
        for name, metric in list(self.metrics.items()):
            try:
                sums[f"eval_{name}"] = metric(outputs, targets).to(loss.dtype).reshape(()) * n
            except Exception as exc:  # noqa: BLE001 - a side metric never fails a trial
                del self.metrics[name]
                self.notes.append(f"metric '{name}' left out: it raised {type(exc).__name__}: {exc}")
        return sums

    def state_dict(self) -> dict[str, Any]:
        """What was learned at the first eval, for a checkpoint."""
        return {
            "accuracy": self.accuracy,
            "metrics": list(self.metrics),
            "num_classes": self.num_classes,
            "notes": list(self.notes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accuracy, self.num_classes, self.notes = state["accuracy"], state["num_classes"], list(state["notes"])
        self.metrics = {name: fn for name, fn in self.metrics.items() if name in state["metrics"]}


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


def eval_sums(terms: Callable[[Any], dict[str, torch.Tensor]], data: Any, device: torch.device, on_device: bool):
    """``terms`` of every eval batch, summed, and the number of examples seen. A key that a
    batch did not return (a metric dropped part-way) is left out of the total."""
    totals: dict[str, torch.Tensor] | None = None
    count = 0
    for batch in user_iterable(data):
        if not on_device:
            batch = to_device(batch, device)
        sums = terms(batch)
        totals = dict(sums) if totals is None else {k: totals[k] + sums[k] for k in totals if k in sums}
        count += batch_size_of(batch)
    return totals or {}, count


def user_iterable(data: Any) -> Iterator[Any]:
    """Iterate the user's data, marking what it raises as theirs (errors.user_code)."""
    with user_code():
        iterator = iter(data)
    while True:
        with user_code():
            try:
                batch = next(iterator)
            except StopIteration:
                return
        yield batch


def eval_record(step: int, sums: dict[str, float], count: int) -> dict[str, float]:
    """The evals.csv row of one evaluation, from the sums over the eval data of ``count`` examples."""
    record = {"step": step, "eval_loss": sums["loss"] / max(count, 1)}
    if sums.get("labelled"):
        record["eval_accuracy"] = sums["correct"] / sums["labelled"]
    record.update({name: value / max(count, 1) for name, value in sums.items() if name.startswith("eval_")})
    return record


def batch_size_of(batch: Any) -> int:
    """Examples in a batch: the length of its first tensor (an ``(inputs, targets)`` pair, or a
    dict such as a HuggingFace collator's); 1 when nothing says."""
    first = batch[0] if isinstance(batch, (list, tuple)) and batch else None
    if isinstance(batch, dict) and batch:
        first = next(iter(batch.values()))
    return len(first) if isinstance(first, torch.Tensor) and first.dim() else 1


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random state training may draw from: torch's (CPU, and the trial's GPU), Python's, numpy's."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class DataStream:
    """``train_data`` re-iterated as epochs, knowing where it is, so a checkpoint can return to it.

    The position is the epoch and the batches taken from it. At each epoch's start the
    random state is noted: a DataLoader draws its shuffling and worker seeds from the global
    random state (or its own generator) when an epoch starts, so replaying each epoch's
    start from its noted state, and skipping the batches already taken, gives the same
    stream again from a fresh workload (:meth:`restore`).
    """

    def __init__(self, data: Any, device: torch.device, rng: dict[str, Any] | None = None) -> None:
        self.data, self.device = data, device
        self.rng = rng  # a random state of its own to start epochs under (a seed's, in a batch of several)
        self.epoch, self.position = -1, 0
        self.epoch_rng: list[dict[str, Any]] = []  # the random state as each epoch started
        self.iterator: Iterator[Any] | None = None

    def __iter__(self) -> DataStream:
        return self

    def __next__(self) -> Any:
        while True:
            starting = self.iterator is None
            if starting:  # a DataLoader draws from the random state when an epoch starts and at its first batch
                outside = self._own_state()
                self.epoch, self.position = self.epoch + 1, 0
                self.epoch_rng.append(rng_state(self.device))
                with user_code():
                    self.iterator = iter(self.data)
            try:
                with user_code():
                    batch = next(self.iterator)
            except StopIteration:
                if self.position == 0:  # an empty epoch would loop forever
                    with user_code():
                        raise ValueError("train_data yielded no batch") from None
                self.iterator = None
                continue
            finally:
                if starting:
                    self._outside_state(outside)
            self.position += 1
            return batch

    def _own_state(self) -> dict[str, Any] | None:
        """Put the stream's own random state in force (when it has one); the state it replaced."""
        if self.rng is None:
            return None
        outside = rng_state(self.device)
        set_rng_state(self.rng, self.device)
        return outside

    def _outside_state(self, outside: dict[str, Any] | None) -> None:
        if outside is not None:
            self.rng.update(rng_state(self.device))
            set_rng_state(outside, self.device)

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "epoch_rng": self.epoch_rng}

    def restore(self, state: dict[str, Any]) -> None:
        """Return a fresh stream over the same data to ``state``; leaves the random state changed."""
        self.iterator = None
        for epoch, noted in enumerate(state["epoch_rng"]):
            set_rng_state(noted, self.device)
            self.iterator = iter(self.data)
            if epoch < state["epoch"]:
                for _ in self.iterator:  # a whole epoch, as training took it
                    pass
            else:
                for _ in range(state["position"]):
                    next(self.iterator)
        self.epoch, self.position = state["epoch"], state["position"]
        self.epoch_rng = list(state["epoch_rng"])


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
    scaled: bool = False,
) -> TrialResult:
    """Judge a trial's records (cut at the steps it ran) and package them as its result."""
    steps_run = losses.size
    evals = [e for e in evals if e["step"] <= steps_run]  # evals past a diverged step of a chunk
    verdict = judge(losses, detect, num_classes, run_length=spec.run_steps)
    # The evaluation at step 0 is of the untrained model: a trial that never beat it did not train.
    eval_losses = [e["eval_loss"] for e in evals if e["step"] > 0 and math.isfinite(e["eval_loss"])]
    return TrialResult(
        spec,
        verdict.status,
        verdict.reason,
        steps_run=int(steps_run),
        wall_seconds=time.perf_counter() - start,
        best_eval_loss=min(eval_losses) if eval_losses else None,
        final_train_loss=float(smoothed(losses, detect.smoothing)[-1]) if steps_run else None,
        diverged_step=verdict.diverged_step,
        instability=verdict.instability,
        instability_step=verdict.step if verdict.status.instability else None,
        spike_step=verdict.spike_step,
        steps=step_log(lrs, losses, norms, thresholds),
        evals=evals,
        # fp16's scaler skips exactly the steps whose unscaled gradient norm is not finite
        skipped_steps=int((~np.isfinite(norms)).sum()) if scaled else None,
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


def trial_failure(exc: BaseException) -> bool:
    """Whether ``exc`` fails the trial (the user's code raised it, or memory ran out) rather
    than being a bug of stabsweep's, which must reach the user as one (exit 1, traceback)."""
    return raised_in_user_code(exc) or isinstance(exc, torch.OutOfMemoryError)


def failed_result(
    spec: TrialSpec,
    exc: BaseException,
    start: float,
    device: torch.device,
    records: tuple[int, StepLog, list[dict[str, float]]] | None = None,
) -> TrialResult:
    """The FAILED record of a trial that raised, naming where in the user's code, with the
    steps it ran (``records``: steps, their log and the evals so far) kept."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    steps, log, evals = records or (0, None, [])
    return TrialResult(
        spec,
        TrialStatus.FAILED,
        f"raised {type(exc).__name__} at {where_raised(exc)}" + (f" after {steps} steps" if steps else ""),
        steps_run=steps,
        wall_seconds=time.perf_counter() - start,
        error=f"{type(exc).__name__}: {exc}",
        steps=log if steps else None,
        evals=evals,
    )


def where_raised(exc: BaseException) -> str:
    """Where to look: ``file.py:line`` of the deepest frame in the user's code; when the error
    came from inside a library (torch, say), that frame, named from the library's folder."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "an unknown place"
    paths = sysconfig.get_paths()
    libraries = [Path(paths["purelib"]).resolve(), Path(paths["platlib"]).resolve(), Path(paths["stdlib"]).resolve()]
    ours = Path(__file__).resolve().parents[1]
    for frame in reversed(frames):
        path = Path(frame.filename).resolve()
        if not path.is_relative_to(ours) and not any(path.is_relative_to(lib) for lib in libraries):
            return f"{path.name}:{frame.lineno}"
    frame = frames[-1]
    path = Path(frame.filename).resolve()
    inside = next((path.relative_to(lib) for lib in libraries if path.is_relative_to(lib)), path.name)
    return f"{inside}:{frame.lineno}"


def read_records(records: list[torch.Tensor]) -> np.ndarray:
    """Per-step 0-dim records as one host array, in one copy."""
    return torch.stack(records).cpu().numpy()
