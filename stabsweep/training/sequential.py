"""One trial at a time: the model itself, plain ``torch.optim``, every step recorded.

The loop is the hot path. On the CPU each step's loss is read at once (cheaper than
buffering it); on a GPU per-step metrics go into 0-dim tensors on the device and reach the
host every ``GPU_SYNC_EVERY`` steps. The learning rate comes from a table computed once,
and the clipping threshold is decided on the device. The divergence rule runs on each chunk, so
a diverging trial stops at the first bad step (on a GPU, at most one chunk later, with its
records cut at the bad step).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch.nn.utils import clip_grads_with_norm_

from stabsweep.analysis.rules import INITIAL_BATCHES, bad_loss, divergence_step, levels_between
from stabsweep.errors import user_code
from stabsweep.optim.optimizers import build_optimizer
from stabsweep.records import TrialResult, TrialSpec
from stabsweep.training.checkpoint import Checkpointer
from stabsweep.training.clipping import build_clipper
from stabsweep.training.common import (
    CPU_SYNC_EVERY,
    GPU_SYNC_EVERY,
    PROGRESS_EVERY_S,
    DataStream,
    EvalTerms,
    Progress,
    autocast,
    eval_record,
    eval_sums,
    evaluating,
    failed_result,
    grad_scaler,
    lr_schedule,
    place_data,
    read_records,
    rng_state,
    set_rng_state,
    step_log,
    to_device,
    training_loss,
    trial_failure,
    trial_result,
)
from stabsweep.training.curvature import SharpnessLog, twice_differentiable
from stabsweep.training.gradients import FlatGrads
from stabsweep.training.layers import TrialLayers
from stabsweep.training.skipping import rule_tensors, skip_rows
from stabsweep.workloads.base import Workload


def train_trial(
    spec: TrialSpec,
    factory: Callable[[int], Workload],
    optimizer: Any,
    detect: Any,
    device: torch.device,
    checkpoints: tuple[str | None, float] = (None, 0.0),
    resume: dict[str, Any] | None = None,
    progress: Progress | None = None,
    layers_every: int = 0,
    precision: str = "fp32",
    sharpness: tuple[int, int] = (0, 20),
) -> TrialResult:
    """Run one trial (from ``resume``, a checkpoint's state, when given). What the user's code
    raises (errors.user_code), or running out of memory, is a FAILED result with the steps it
    ran, never a crash of the sweep; anything else is a bug of stabsweep's and is raised."""
    start = time.perf_counter()
    trial = None
    try:
        checkpointer = Checkpointer(*checkpoints, [spec])
        trial = _Trial(
            spec, factory(spec.seed), optimizer, detect, device, checkpointer, layers_every, precision, sharpness
        )
        return trial.run(start, resume, progress)
    except Exception as exc:
        if not trial_failure(exc):
            raise
        return failed_result(spec, exc, start, device, trial.records() if trial else None)


class _Trial:
    def __init__(
        self,
        spec: TrialSpec,
        workload: Workload,
        optimizer: Any,
        detect: Any,
        device: torch.device,
        checkpointer: Checkpointer,
        layers_every: int = 0,
        precision: str = "fp32",
        sharpness: tuple[int, int] = (0, 20),
    ) -> None:
        self.spec, self.workload, self.detect, self.device = spec, workload, detect, device
        self.precision, self.scaler = precision, grad_scaler(device, precision)
        self.checkpointer = checkpointer
        self.model = workload.model.to(device)
        named = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.layers = TrialLayers([name for name, _ in named], self.params, layers_every)
        self.lrs = lr_schedule(spec)
        self.optimizer = build_optimizer(optimizer.name, optimizer.kwargs, self.params, float(self.lrs[0]))
        self.clipper = build_clipper([spec.clip], device)
        self.sharpness = SharpnessLog(*sharpness, optimizer, 1, batched=False)  # (every, iterations)
        self.eval_terms = EvalTerms(workload)
        self.data_on_device = place_data(workload.train_data, device)
        self.eval_on_device = place_data(workload.eval_data, device)
        self.sync_every = CPU_SYNC_EVERY if device.type == "cpu" else GPU_SYNC_EVERY
        # The loop's state, kept here so a failure can report the steps that ran and a
        # checkpoint can save them. Per-step records stay 0-dim tensors on the device,
        # appended to lists and stacked when read: a store into a preallocated tensor
        # (``buf[step] = x``) would be an indexing op per step, and on a GPU a kernel launch
        # per record and step.
        self.step = 0  # updates applied
        self.synced = 0  # steps whose losses are read and judged
        self.losses = np.full(spec.steps, np.nan)
        self.step_losses: list[torch.Tensor | None] = []  # per-step losses, read in chunks (GPU)
        self.norms: list[torch.Tensor] = []
        self.thresholds: list[torch.Tensor] = []
        self.evals: list[dict[str, float]] = []
        self.stream = DataStream(workload.train_data, device)
        self.skip_losses: list[torch.Tensor] = []  # train.skip_spikes: the losses its window reads (device)
        self.skipped = 0  # updates skipped as spikes

    def run(self, start: float, resume: dict[str, Any] | None, progress: Progress | None) -> TrialResult:
        grads = FlatGrads(self.params)
        try:
            if resume is None:
                self.evals.append(self.evaluate(0))
            else:
                self._restore(resume)
            diverged_at = self._train(grads, progress)
        finally:
            grads.close()
        steps_run = diverged_at or self.spec.steps
        result = trial_result(
            self.spec,
            self.detect,
            self.eval_terms.num_classes,
            start,
            self.lrs,
            self.losses[:steps_run],
            read_records(self.norms[:steps_run]),
            read_records(self.thresholds[:steps_run]) if self.thresholds else np.full(steps_run, np.nan),
            self.evals,
            scaled=self.scaler is not None,
        )
        self.checkpointer.discard()
        layers = self.layers.log(steps_run) if self.layers.every else None
        if self.spec.skip is not None:
            result = dataclasses.replace(result, skipped_steps=(result.skipped_steps or 0) + self.skipped)
        return dataclasses.replace(result, notes=self._notes(), layers=layers, sharpness=self.sharpness.log(0))

    def _spike(self, loss: torch.Tensor, norm: torch.Tensor) -> bool:
        """Whether train.skip_spikes skips this update (training/skipping.py); one host read per
        step, the price of deciding in Python whether torch.optim steps."""
        window = self.spec.skip.window
        earlier = self.skip_losses[-window:]
        if earlier:
            losses = torch.stack(earlier).reshape(1, -1)
            norms = torch.stack(self.norms[-len(earlier) - 1 : -1]).reshape(1, -1).to(losses)
        else:
            losses = norms = torch.empty(1, 0, device=loss.device)
        sigma, width = rule_tensors([self.spec.skip], loss.device)
        skip = skip_rows(losses, norms, loss.detach().reshape(1), norm.reshape(1), sigma, width, window)
        self.skip_losses.append(loss.detach().float())
        return bool(skip[0])

    def _optimizer_states(self) -> list[dict[str, Any]]:
        """Each parameter's optimizer state (empty before the first step): the preconditioner's source."""
        return [self.optimizer.state.get(p, {}) for p in self.params]

    def _train(self, grads: FlatGrads, progress: Progress | None) -> int | None:
        """Train to the last step; the step the trial diverged at, or None."""
        next_report = 0.0
        steps, device, divergence_factor = self.spec.steps, self.device, self.detect.divergence_factor
        patience = self.detect.divergence_patience
        bad_run = 0  # losses above the divergence bar in a row, up to this step
        group, scaler = self.optimizer.param_groups[0], self.scaler
        lrs = self.lrs.tolist()  # Python floats once, not a numpy scalar conversion per step
        losses = self.losses
        level = float(levels_between(losses, self.step - 1, self.step, divergence_factor)[0]) if self.step else math.nan
        # Every step on the CPU, where reading a loss costs less than buffering it; in chunks
        # on a GPU, where each read would stall the device.
        read_now = self.sync_every == 1
        self.model.train()
        for step in range(self.step, steps):
            group["lr"] = lrs[step]
            batch = next(self.stream)
            if not self.data_on_device:
                batch = to_device(batch, device)
            measuring = self.sharpness.due(step)
            with autocast(device, self.precision), twice_differentiable() if measuring else nullcontext():
                loss = training_loss(self.workload, self.model, batch)
            if measuring:
                self.sharpness.measure(step, loss.reshape(1), self.params, [0], self._optimizer_states)
            grads.zero()
            with user_code():  # the backward of the user's graph (a custom autograd.Function's, say)
                (loss if scaler is None else scaler.scale(loss)).backward()
            if scaler is not None:
                scaler.unscale_(self.optimizer)  # the norm, clipping and the records see the true gradients
            norm = grads.norm()
            if read_now:
                losses[step] = loss.item()
            else:
                self.step_losses.append(loss.detach().float())
            self.norms.append(norm)
            logging = self.layers.due(step)
            if logging:
                self.layers.before_step()
            if self.clipper is not None:
                threshold = self.clipper.threshold(norm.reshape(1), step)[0]
                self.thresholds.append(threshold)
                clip_grads_with_norm_(self.params, threshold, norm)
            if self.spec.skip is not None and self._spike(loss, norm):
                self.skipped += 1  # the weights and the optimizer state stay as they were
            elif scaler is None:
                self.optimizer.step()
            else:  # skipped when the gradients are not finite; the scale adapts
                scaler.step(self.optimizer)
                scaler.update()
            if logging:
                self.layers.after_step(step)

            self.step = done = step + 1
            if read_now:  # one fresh loss: plain floats beat numpy calls
                self.synced = done
                if step < INITIAL_BATCHES:  # the initial level (analysis/rules.py's initial_levels)
                    level = min(max(float(np.median(losses[: step + 1])), losses[0]), divergence_factor * losses[0])
                if bad_loss(losses[step], level, divergence_factor):
                    bad_run += 1
                    if bad_run > patience or not math.isfinite(losses[step]):
                        return done
                else:
                    bad_run = 0
            elif done - self.synced >= self.sync_every or done == steps:
                synced = self.synced
                losses[synced:done] = torch.stack(self.step_losses[synced:done]).cpu().numpy()
                self.synced = done
                since = max(0, synced - patience)  # a run of bad losses may have begun in the last chunk
                levels = levels_between(losses[:INITIAL_BATCHES], since, done, divergence_factor)
                diverged_at = divergence_step(losses[since:done], levels, divergence_factor, since, patience)
                if diverged_at is not None:
                    return diverged_at
            if done % self.spec.eval_every == 0 or done == steps:
                self.evals.append(self.evaluate(done))
            if self.synced == done and self.checkpointer.due():
                self.checkpointer.save(self._state())
            if progress is not None and time.monotonic() >= next_report:
                next_report = time.monotonic() + PROGRESS_EVERY_S
                progress(done, steps, 1)
        return None

    def evaluate(self, step: int) -> dict[str, float]:
        """Mean eval loss over ``eval_data`` (and accuracy for classifiers); NaN without eval data."""
        data = self.workload.eval_data
        if data is None:
            return {"step": step, "eval_loss": math.nan}
        with evaluating(self.model, self.device), autocast(self.device, self.precision):
            sums, count = eval_sums(
                lambda batch: self.eval_terms(self.model, batch), data, self.device, self.eval_on_device
            )
        return eval_record(step, {name: float(value) for name, value in sums.items()}, count)

    def records(self) -> tuple[int, Any, list[dict[str, float]]]:
        """The steps that ran, their records and the evals so far: what a failed trial reports."""
        steps = self.step
        losses = self.losses[:steps].copy()
        if self.synced < steps:
            losses[self.synced : steps] = read_records(self.step_losses[self.synced : steps])
        norms = read_records(self.norms[:steps]) if self.norms else np.full(steps, np.nan)
        thresholds = read_records(self.thresholds[:steps]) if self.thresholds else np.full(steps, np.nan)
        return steps, step_log(self.lrs, losses, norms[:steps], thresholds[:steps]), self.evals

    def _notes(self) -> tuple[str, ...]:
        sharpness = [self.sharpness.note] if self.sharpness.note else []
        return (*self.eval_terms.notes, *([self.checkpointer.note] if self.checkpointer.note else []), *sharpness)

    def _state(self) -> dict[str, Any]:
        """Everything the loop needs to go on exactly where it is (see training/checkpoint.py)."""
        return {
            "kind": "sequential",
            "specs": [self.spec],
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "clipper": self.clipper.state_dict() if self.clipper is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "losses": self.losses[: self.step].copy(),
            "norms": read_records(self.norms),
            "thresholds": read_records(self.thresholds) if self.thresholds else None,
            "evals": list(self.evals),
            "eval_terms": self.eval_terms.state_dict(),
            "layers": self.layers.state(),
            "sharpness": self.sharpness.records,
            "skipped": self.skipped,
            "data": self.stream.state(),
            "rng": rng_state(self.device),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.sharpness.records = state.get("sharpness", self.sharpness.records)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.clipper is not None:
            self.clipper.load_state_dict(state["clipper"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = self.synced = state["step"]
        self.losses[: self.step] = state["losses"]
        self.skipped = state.get("skipped", 0)
        if self.spec.skip is not None:
            self.skip_losses = list(torch.as_tensor(self.losses[: self.step], dtype=torch.float32).unbind())
        self.step_losses = [None] * self.step  # read already; only later entries are ever read
        self.norms = list(torch.as_tensor(state["norms"], device=self.device).unbind())
        if state["thresholds"] is not None:
            self.thresholds = list(torch.as_tensor(state["thresholds"], device=self.device).unbind())
        self.evals = list(state["evals"])
        self.eval_terms.load_state_dict(state["eval_terms"])
        self.layers.restore(state["layers"], self.device)
        self.stream.restore(state["data"])
        set_rng_state(state["rng"], self.device)
