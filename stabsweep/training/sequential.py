"""One trial at a time: the model itself, plain ``torch.optim``, every step recorded.

The loop is the hot path. On the CPU each step's loss is read at once (cheaper than
buffering it); on a GPU per-step metrics go into 0-dim tensors on the device and reach the
host every ``GPU_SYNC_EVERY`` steps. The learning rate comes from a table computed once,
and the clipping threshold is decided on the device. The divergence rule runs on each chunk, so
a diverging trial stops at the first bad step (on a GPU, at most one chunk later, with its
records cut at the bad step).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.nn.utils import clip_grads_with_norm_

from stabsweep.analysis.rules import diverged, divergence_step
from stabsweep.optim.optimizers import build_optimizer
from stabsweep.records import TrialResult, TrialSpec
from stabsweep.training.clipping import build_clipper
from stabsweep.training.common import (
    CPU_SYNC_EVERY,
    GPU_SYNC_EVERY,
    EvalTerms,
    batch_size_of,
    batches_forever,
    eval_record,
    evaluating,
    failed_result,
    lr_schedule,
    place_data,
    read_records,
    to_device,
    training_loss,
    trial_result,
)
from stabsweep.training.gradients import FlatGrads
from stabsweep.workloads.base import Workload


def train_trial(
    spec: TrialSpec,
    factory: Callable[[int], Workload],
    optimizer: Any,
    detect: Any,
    device: torch.device,
) -> TrialResult:
    """Run one trial; an exception inside it is a FAILED result, never a crash of the sweep."""
    start = time.perf_counter()
    try:
        return _Trial(spec, factory(spec.seed), optimizer, detect, device).run(start)
    except Exception as exc:  # noqa: BLE001 - a trial that raises is a result, not a crash
        return failed_result(spec, exc, start, device)


class _Trial:
    def __init__(
        self,
        spec: TrialSpec,
        workload: Workload,
        optimizer: Any,
        detect: Any,
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
                if diverged(losses[step], losses[0], self.detect.divergence_factor):
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
            read_records(norms[:steps_run]),
            read_records(thresholds[:steps_run]) if thresholds else np.full(steps_run, np.nan),
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
