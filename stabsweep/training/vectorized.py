"""A batch of trials as one computation: stacked parameters, forward and backward under ``vmap``.

Trials of one batch share the architecture and differ in learning rate, schedule, warmup,
clipping threshold, length and seed. Their parameters are stacked along a leading trial axis
(``torch.func.stack_module_state``), laid out as one row of weights per trial, and ``vmap``
gives every trial's loss, each on its seed's batch of data (how seeds share a batch:
``training/seeds.py``); one backward pass gives every trial's gradients.

The optimizer is torch.optim's own, not a re-implementation. One optimizer holds the rows of
weights with ``lr = 1``; after its step, each trial's weights are moved to
``before + lr_i · (after − before)``. That is exact because in torch.optim's formulations of
every optimizer stabsweep names, the state (momentum, moment estimates, squared-gradient
sums) never depends on the learning rate, the step is elementwise (so a trial's weights may
share one row) and linear in the rate: SGD, RMSprop, Adam, AdamW and NAdam (whose decoupled
decay ``p·(1 − lr·wd)`` is linear too) and Adagrad, whose ``lr_decay`` divides the rate by
``1 + (step − 1)·lr_decay``, still linear in ``lr``. ``tests/test_vectorized.py`` checks each
against the same trial run alone.

A trial that diverges or reaches its last step is written out at once and its rows are cut
out of the parameters, the optimizer state and the clipping state ("compaction"), so the
rest of the batch stops paying for it.

A parameter the first backward does not reach (an unused head, say) is left out of the rows
and kept at its initial value, as a plain loop's optimizer skips a parameter whose ``grad`` is
None. One that is reached in some steps and not in others cannot be skipped step by step in a
shared row of optimizer state (Adam counts steps per parameter), so the batch stops and its
remaining trials run one at a time.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap

from stabsweep.analysis.rules import INITIAL_BATCHES, divergence_steps, levels_between
from stabsweep.errors import user_code
from stabsweep.optim.optimizers import build_optimizer
from stabsweep.records import TrialResult, TrialSpec
from stabsweep.training.checkpoint import Checkpointer
from stabsweep.training.clipping import build_clipper
from stabsweep.training.common import (
    CPU_SYNC_EVERY,
    GPU_SYNC_EVERY,
    PROGRESS_EVERY_S,
    EvalTerms,
    Progress,
    autocast,
    eval_record,
    eval_sums,
    evaluating,
    lr_schedule,
    rng_state,
    set_rng_state,
    step_log,
    training_loss,
    trial_result,
)
from stabsweep.training.curvature import SharpnessLog, twice_differentiable
from stabsweep.training.layers import BatchLayers
from stabsweep.training.seeds import SeedGroups
from stabsweep.training.skipping import STEP_COUNTED, rule_tensors, skip_rows
from stabsweep.training.vmap_support import (
    NotVectorizable,
    batchable_attention,
    noting_looped_ops,
    quiet_looped_ops,
    running_buffers,
    why_not_vectorizable,
)
from stabsweep.workloads.base import Workload


class TrialBatch:
    """Trials trained together, of one seed or several; ``run()`` yields each result as it is decided."""

    def __init__(
        self,
        specs: list[TrialSpec],
        factory: Callable[[int], Workload],
        optimizer: Any,
        detect: Any,
        device: torch.device,
        checkpointer: Checkpointer | None = None,
        layers_every: int = 0,
        precision: str = "fp32",
        sharpness: tuple[int, int] = (0, 20),
    ) -> None:
        specs = sorted(specs, key=lambda spec: spec.seed)  # each seed's rows contiguous (training/seeds.py)
        self.precision = precision
        self.specs, self.detect, self.device = specs, detect, device
        self.checkpointer = checkpointer or Checkpointer(None, 0, specs)
        self.seeds = SeedGroups([spec.seed for spec in specs], factory, device)
        template = self.seeds.template
        reason = why_not_vectorizable(template.workload.model, precision)
        if reason:
            raise NotVectorizable(reason)
        self.workload, self.bound = template.workload, template.bound
        count = len(specs)
        stacked, buffers = stack_module_state([self.seeds.groups[g].bound for g in self.seeds.row_group])
        trainable = [name for name, p in self.bound.named_parameters() if p.requires_grad]
        self.shapes = {name: stacked[name].shape[1:] for name in trainable}
        # All trainable weights of a trial in one row: the optimizer, the grad norm, clipping and
        # the per-trial rate each become one op over [trial, weight] instead of one per parameter.
        self.flat = torch.cat([stacked[name].detach().reshape(count, -1) for name in trainable], dim=1)
        # Trainable parameters the first backward did not reach: shared, at their initial value,
        # and still differentiated, so a step that does reach them is noticed.
        self.dormant: list[str] = []
        # The memory order of each parameter's dims within its slice of the row: see _settle.
        self.orders = {name: tuple(range(len(shape))) for name, shape in self.shapes.items()}
        self.layers = BatchLayers(layers_every)
        self._split_flat()
        # Frozen parameters and buffers: passed once, unbatched, when every seed has the same
        # (always with one seed); per row otherwise (a frozen embedding drawn from the seed).
        fixed = {**{n: t for n, t in stacked.items() if n not in self.shapes}, **buffers}
        # Running statistics are updated in place by each trial's own forward: one row per trial.
        running = {f"model.{name}" for name in running_buffers(template.workload.model)}
        same = {name: name not in running and bool((value == value[:1]).all()) for name, value in fixed.items()}
        self.shared = {name: value[0].detach() for name, value in fixed.items() if same[name]}
        self.row_shared = {name: value.detach() for name, value in fixed.items() if not same[name]}
        self.optimizer = build_optimizer(optimizer.name, optimizer.kwargs, [self.flat], 1.0)
        self.clipper = build_clipper([s.clip for s in specs], device)
        self.sharpness = SharpnessLog(*sharpness, optimizer, count)  # (every, iterations)
        rules = [s.skip for s in specs]
        self.skipping = any(rule is not None for rule in rules)
        if self.skipping and optimizer.name in STEP_COUNTED:
            raise NotVectorizable(
                f"train.skip_spikes with {optimizer.name}: its update reads its step count, one per batch of trials "
                "in torch.optim, and a skipped step must not count for one trial alone"
            )
        self.skip_sigma, self.skip_window = rule_tensors(rules, device)
        self.skip_width = max((rule.window for rule in rules if rule is not None), default=2)
        self.lr_tables = [lr_schedule(s) for s in specs]
        self.max_steps = max(s.steps for s in specs)
        padded = np.stack([np.pad(t, (0, self.max_steps - t.size), constant_values=np.nan) for t in self.lr_tables])
        self.lr_rows = torch.as_tensor(padded, dtype=torch.float32, device=device)  # [active trial, step]
        self.eval_terms = EvalTerms(self.workload)
        # Dropout masks are shared by the trials of one seed, as its data order is.
        self.losses_of = vmap(self._loss, in_dims=(0, 0, None, None), randomness="same")
        self.losses_stacked = vmap(self._loss, in_dims=(0, 0, None, 0), randomness="same")  # a batch per row
        self.eval_batch = vmap(self._eval, in_dims=(0, 0, None, None), randomness="same")
        self.sync_every = CPU_SYNC_EVERY if device.type == "cpu" else GPU_SYNC_EVERY
        self.steps_done = 0  # how far the batch got; 0 means no update was applied yet
        # Ops vmap loops over, noted at the first eval and the first step (where every op a
        # model uses in eval and in training mode first runs). Later repeats are not printed.
        self.looped_ops: set[str] = set()

    def _split_flat(self) -> None:
        """Per-parameter views [trial, *shape] of the flat weights (the model's inputs, which
        autograd differentiates) and of the flat gradient (where the step reads them)."""
        self.flat_grad = torch.zeros_like(self.flat)
        self.before = torch.empty_like(self.flat)
        self.params, self.grad_views, start, spans = {}, [], 0, []
        for name, shape in self.shapes.items():
            end = start + math.prod(shape)
            spans.append((name, start, end))
            order = self.orders[name]
            stored = [shape[d] for d in order]
            back = (0, *(1 + order.index(d) for d in range(len(shape))))  # stored order -> shape
            self.params[name] = self.flat[:, start:end].view(-1, *stored).permute(back).requires_grad_()
            self.grad_views.append(self.flat_grad[:, start:end].view(-1, *stored).permute(back))
            start = end
        # What backward differentiates: the rows, and the dormant parameters, to notice a step that reaches one.
        self.grad_inputs = [*self.params.values(), *(self.shared[name] for name in self.dormant)]
        if self.layers.every:
            self.layers.lay_out(spans, self.flat.device)

    def _settle(self, grads: tuple[torch.Tensor | None, ...]) -> list[torch.Tensor]:
        """Fix the rows' layout from the first backward, before any optimizer state exists.

        A parameter with no gradient becomes dormant: out of the rows, so neither the optimizer
        nor weight decay touches it, as in a plain loop. The others are laid out in the memory
        order their gradients come back in: under vmap, autograd returns an ``nn.Linear``
        weight's gradient as a transposed view, and copying it into a row laid out as
        [out, in] is a strided transpose, the slowest step of the batch on a CPU.
        """
        reached = {name: grad for name, grad in zip(self.shapes, grads, strict=True) if grad is not None}
        if not reached:
            raise NotVectorizable("no trainable parameter gets a gradient at the first step")
        orders = {}
        for name, grad in reached.items():
            order = tuple(sorted(range(grad.dim() - 1), key=lambda d: -grad.stride(d + 1)))
            contiguous = grad.permute(0, *(1 + d for d in order)).is_contiguous()
            orders[name] = order if contiguous else self.orders[name]
        if orders != self.orders:
            for name in [name for name in self.shapes if name not in reached]:
                self.shared[name] = self.params[name][0].detach().clone().requires_grad_()
                self.dormant.append(name)
            count = len(self.flat)
            rows = [
                self.params[name].detach().permute(0, *(1 + d for d in orders[name])).reshape(count, -1)
                for name in orders
            ]
            self.shapes = {name: self.shapes[name] for name in orders}
            self.orders = orders
            self.flat.data = torch.cat(rows, dim=1)  # the same tensor object the optimizer holds
            self._split_flat()
        return list(reached.values())

    def _gradients(self, loss: torch.Tensor, step: int) -> list[torch.Tensor]:
        """Every trial's gradients, one tensor per parameter in the rows. Trials are independent,
        so the gradient of the summed loss with respect to a trial's row is that of its own loss."""
        with user_code():  # the backward of the user's graph (a custom autograd.Function's, say)
            grads = torch.autograd.grad(loss.sum(), self.grad_inputs, allow_unused=True)
        if step == 0:
            return self._settle(grads)
        rows = len(self.params)
        if any(grad is None for grad in grads[:rows]) or any(grad is not None for grad in grads[rows:]):
            names = [*self.params, *self.dormant]
            flips = [name for name, grad in zip(names, grads, strict=True) if (grad is None) != (name in self.dormant)]
            name = flips[0].removeprefix("model.")
            raise NotVectorizable(
                f"parameter '{name}' gets a gradient in some steps and not in others (first change at step "
                f"{step + 1}); torch.optim skips it when it has none, which one row of optimizer state per trial cannot"
            )
        return list(grads[:rows])

    def _loss(self, params: dict, row_shared: dict, shared: dict, batch: Any) -> torch.Tensor:
        weights = {**params, **row_shared, **shared}
        return functional_call(self.bound, weights, (partial(training_loss, self.workload), batch))

    def _eval(self, params: dict, row_shared: dict, shared: dict, batch: Any) -> Any:
        return functional_call(self.bound, {**params, **row_shared, **shared}, (self.eval_terms, batch))

    def _rows(self, start: int, end: int) -> tuple[dict, dict]:
        """The weights of rows ``start:end`` (views: the gradient reaches the rows through them)."""
        if start == 0 and end == len(self.active):
            return self.params, self.row_shared
        return (
            {name: p[start:end] for name, p in self.params.items()},
            {name: t[start:end] for name, t in self.row_shared.items()},
        )

    def _losses(self) -> torch.Tensor:
        """This step's loss of every active trial, each on its own seed's batch."""
        seeds, ranges = self.seeds, self.seeds.ranges()
        batches = [seeds.next_batch(group) for group, _, _ in ranges]
        if len(ranges) == 1 and ranges[0][0].rng is None:  # one seed, the global random state its own
            return self.losses_of(self.params, self.row_shared, self.shared, batches[0])
        if seeds.random is False:  # no random numbers in the forward: one call, a batch per row
            stacked = seeds.stacked(batches, ranges)
            if stacked is not None:
                return self.losses_stacked(self.params, self.row_shared, self.shared, stacked)
        losses = []
        for (group, start, end), batch in zip(ranges, batches, strict=True):
            with seeds.torch_rng(group):
                before = torch.get_rng_state() if seeds.random is None else None
                losses.append(self.losses_of(*self._rows(start, end), self.shared, batch))
                if before is not None:  # the first step tells whether the model draws random numbers
                    seeds.random = not torch.equal(before, torch.get_rng_state())
        return torch.cat(losses)

    def run(self, resume: dict[str, Any] | None = None, progress: Progress | None = None) -> Iterator[TrialResult]:
        """Train the batch (from ``resume``, a checkpoint's state, when given); yield each
        trial's result at the step it diverges or ends."""
        self.start = time.perf_counter()
        count, steps = len(self.specs), self.max_steps
        self.active = np.arange(count)  # row i of the stacked tensors is trial specs[active[i]]
        self.rows = torch.arange(count, device=self.device)  # the same, on the device, to index buffers
        self.loss_buf = torch.full((count, steps), math.nan, device=self.device)
        self.norm_buf = torch.full((count, steps), math.nan, device=self.device)
        self.threshold_buf = torch.full((count, steps), math.nan, device=self.device)
        self.skip_buf = torch.zeros((count, steps), device=self.device)  # 1: train.skip_spikes skipped the update
        self.losses = np.full((count, steps), np.nan)  # the losses read so far, on the host
        self.evals: list[list[dict[str, float]]] = [[] for _ in self.specs]
        self.finished: list[TrialResult] = []  # results handed out so far, kept for a checkpoint
        self.synced = 0  # steps whose losses are on the host and judged
        self.progress, self.next_report = progress, 0.0
        if resume is None:
            with quiet_looped_ops(), noting_looped_ops(self.looped_ops), batchable_attention(self.device):
                self._record_evals(0, self.active)
        else:
            self._restore(resume)
            yield from resume["finished"]
        self.bound.train()
        while self.active.size:
            # vmap's warning for an op it loops over is noted once (see noting_looped_ops) and
            # silenced only around the batch's own steps, not for the rest of the process.
            with quiet_looped_ops(), batchable_attention(self.device):
                finished = self._advance()
            self.finished += finished
            yield from finished
        self.checkpointer.discard()

    def _advance(self) -> list[TrialResult]:
        """Train step after step until some trials diverge or reach their end; their results."""
        ends = np.array([s.steps for s in self.specs])
        end_steps = set(ends.tolist())  # the steps at which some trial finishes, known up front
        eval_every = self.specs[0].eval_every
        finished: list[TrialResult] = []
        while not finished:
            step = self.steps_done
            measuring = self.sharpness.due(step)
            with (
                noting_looped_ops(self.looped_ops) if step == 0 else nullcontext(),
                autocast(self.device, self.precision),
                twice_differentiable() if measuring else nullcontext(),
            ):
                loss = self._losses()  # [active trial]
                if measuring:
                    self.sharpness.measure(step, loss, list(self.params.values()), self.active, self._optimizer_states)
            grads = self._gradients(loss, step)
            for view, grad in zip(self.grad_views, grads, strict=True):
                view.copy_(grad)
            norms = torch.linalg.vector_norm(self.flat_grad, dim=1)  # get_total_norm, per trial
            self.loss_buf[self.rows, step] = loss.detach().float()  # a record is float32 whatever the precision
            self.norm_buf[self.rows, step] = norms
            logging = self.layers.due(step)
            if logging:
                self.layers.before_clipping(self.flat_grad)
            if self.clipper is not None:
                thresholds = self.clipper.threshold(norms, step)
                self.threshold_buf[self.rows, step] = thresholds
                scale = (thresholds / (norms + 1e-6)).clamp(max=1.0)  # clip_grads_with_norm_'s formula
                self.flat_grad.mul_(scale[:, None])
            skip = None
            if self.skipping:  # train.skip_spikes: judged against the window before this step, on the device
                start = max(0, step - self.skip_width)
                skip = skip_rows(
                    self.loss_buf[self.rows, start:step],
                    self.norm_buf[self.rows, start:step],
                    self.loss_buf[self.rows, step],
                    norms,
                    self.skip_sigma,
                    self.skip_window,
                    self.skip_width,
                )
                self.skip_buf[self.rows, step] = skip.float()
            self._step(self.lr_rows[:, step], skip)
            if logging:
                self.layers.after_step(step, self.rows, self.before, self.flat)
            self.steps_done = done = step + 1

            at_an_end = done in end_steps
            if done - self.synced >= self.sync_every or at_an_end:
                finished += self._judge_chunk(done)
            finishing = ends[self.active] == done if at_an_end else None
            ending = finishing is not None and finishing.any()
            if done % eval_every == 0:
                self._record_evals(done, self.active)
            elif ending:  # as alone, a trial is evaluated at its own last step, not at others'
                self._record_evals(done, self.active, due=finishing)
            if ending:
                finished += [self._result(self.active[i], done) for i in np.flatnonzero(finishing)]
                self._keep(~finishing)
            if self.active.size == 0:
                break
            if self.synced == done and self.checkpointer.due():
                self.checkpointer.save(self._state(finished))
            if self.progress is not None and time.monotonic() >= self.next_report:
                self.next_report = time.monotonic() + PROGRESS_EVERY_S
                self.progress(done, self.max_steps, self.active.size)
        return finished

    def _judge_chunk(self, done: int) -> list[TrialResult]:
        """Read the losses since the last read to the host and stop the trials that diverged."""
        active, synced = self.active, self.synced
        self.losses[active, synced:done] = self.loss_buf[self.rows, synced:done].cpu().numpy()
        patience = self.detect.divergence_patience
        since = max(0, synced - patience)  # a run of bad losses may have begun in the last chunk
        levels = levels_between(self.losses[active, :INITIAL_BATCHES], since, done, self.detect.divergence_factor)
        diverged = divergence_steps(
            self.losses[active, since:done], levels, self.detect.divergence_factor, since, patience
        )
        self.synced = done
        results = [self._result(active[i], int(diverged[i])) for i in np.flatnonzero(diverged)]
        if results:
            self._keep(diverged == 0)
        return results

    @torch.no_grad()
    def _step(self, lrs: torch.Tensor, skip: torch.Tensor | None = None) -> None:
        """torch.optim's step at lr = 1, then each trial's share of it at its own rate; rows
        that ``skip`` (train.skip_spikes) keep their weights and optimizer state."""
        self.before.copy_(self.flat)
        self.flat.grad = self.flat_grad
        state = self.optimizer.state.get(self.flat, {})
        kept = {k: v.clone() for k, v in state.items() if _per_row(v, len(self.flat))} if skip is not None else {}
        self.optimizer.step()
        if skip is not None:
            lrs = torch.where(skip, torch.zeros_like(lrs), lrs)
            for key, value in kept.items():
                state[key].copy_(torch.where(skip.view(-1, *([1] * (value.dim() - 1))), value, state[key]))
        # before + lr·(after − before), written over `after`. Not flat.lerp_(before, 1 − lr):
        # 1 − lr rounds in float32, which shortened lr = 1e-5's step by 0.14%.
        torch.lerp(self.before, self.flat, lrs[:, None], out=self.flat)

    def _keep(self, mask: np.ndarray) -> None:
        """Drop finished trials' rows from everything stacked, so they cost nothing more."""
        index = torch.as_tensor(np.flatnonzero(mask), device=self.device)
        old = len(self.active)
        state = self.optimizer.state.get(self.flat, {})
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == old:
                state[key] = value[index]
        self.flat.grad = None
        self.flat.data = self.flat.data[index]  # the same tensor object: the optimizer's key for its state
        self._split_flat()
        self.lr_rows = self.lr_rows[index]
        self.skip_sigma, self.skip_window = self.skip_sigma[index], self.skip_window[index]
        self.row_shared = {name: value[index] for name, value in self.row_shared.items()}
        self.seeds.keep(mask)
        if self.clipper is not None:
            self.clipper.keep(index)
        self.sharpness.power.keep(index)
        self.active, self.rows = self.active[mask], self.rows[index]

    def _record_evals(self, step: int, active: np.ndarray, due: np.ndarray | None = None) -> None:
        """Evaluate every active trial (one vmapped pass per seed, on its own eval data) and
        record the result for rows ``due``."""
        recorded = set(range(len(active))) if due is None else set(np.flatnonzero(due).tolist())
        for group, start, end in self.seeds.ranges():
            data = group.workload.eval_data
            rows = [row for row in range(start, end) if row in recorded]
            if not rows:
                continue
            if data is None:
                for row in rows:
                    self.evals[active[row]].append({"step": step, "eval_loss": math.nan})
                continue
            params, row_shared = self._rows(start, end)
            with evaluating(self.bound, self.device), autocast(self.device, self.precision):
                sums, count = eval_sums(
                    lambda batch, p=params, r=row_shared: self.eval_batch(p, r, self.shared, batch),
                    data,
                    self.device,
                    group.eval_on_device,
                )
            values = {name: value.tolist() for name, value in sums.items()}
            for row in rows:
                record = eval_record(step, {name: v[row - start] for name, v in values.items()}, count)
                self.evals[active[row]].append(record)

    def _result(self, trial: int, steps_run: int) -> TrialResult:
        result = trial_result(
            self.specs[trial],
            self.detect,
            self.eval_terms.num_classes,
            self.start,
            self.lr_tables[trial],
            self.losses[trial, :steps_run],
            self.norm_buf[trial, :steps_run].cpu().numpy(),
            self.threshold_buf[trial, :steps_run].cpu().numpy(),
            self.evals[trial],
        )
        notes = (*self.eval_terms.notes, *([self.checkpointer.note] if self.checkpointer.note else []))
        notes += (self.sharpness.note,) if self.sharpness.note else ()
        layers = self.layers.log(trial, steps_run) if self.layers.every else None
        return dataclasses.replace(
            result,
            engine="vectorized",
            looped_ops=tuple(sorted(self.looped_ops)),
            notes=tuple(notes),
            layers=layers,
            sharpness=self.sharpness.log(trial),
            skipped_steps=int(self.skip_buf[trial, :steps_run].sum())
            if self.specs[trial].skip
            else result.skipped_steps,
        )

    def _skipped(self, trial: int, steps_run: int) -> int:
        return int(self.skip_buf[trial, :steps_run].sum())

    def _optimizer_states(self) -> list[dict[str, Any]]:
        """Each parameter's view [trial, *shape] of the rows' optimizer state (the preconditioner's
        source); empty before the first step."""
        state = self.optimizer.state.get(self.flat, {})
        views: list[dict[str, Any]] = [{} for _ in self.params]
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == self.flat.shape:
                for view, tensor in zip(views, self._param_views(value), strict=True):
                    view[key] = tensor
            else:
                for view in views:
                    view[key] = value
        return views

    def _param_views(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views [trial, *shape] of a tensor laid out as the rows (see _split_flat)."""
        views, start = [], 0
        for name, shape in self.shapes.items():
            end = start + math.prod(shape)
            order = self.orders[name]
            back = (0, *(1 + order.index(d) for d in range(len(shape))))
            views.append(rows[:, start:end].reshape(-1, *[shape[d] for d in order]).permute(back))
            start = end
        return views

    def records(self, spec: TrialSpec) -> tuple[int, Any, list[dict[str, float]]]:
        """The steps a trial ran so far, its records and its evals: what it reports when the
        batch fails part-way."""
        trial = self.specs.index(spec)
        steps = min(self.steps_done, self.specs[trial].steps) if hasattr(self, "loss_buf") else 0
        losses = self.loss_buf[trial, :steps].cpu().numpy().astype(float) if steps else np.empty(0)
        norms = self.norm_buf[trial, :steps].cpu().numpy() if steps else np.empty(0)
        thresholds = self.threshold_buf[trial, :steps].cpu().numpy() if steps else np.empty(0)
        return steps, step_log(self.lr_tables[trial], losses, norms, thresholds), self.evals[trial] if steps else []

    def _state(self, handing_out: list[TrialResult]) -> dict[str, Any]:
        """Everything the batch needs to go on exactly where it is (see training/checkpoint.py)."""
        done = self.steps_done
        return {
            "kind": "vectorized",
            "specs": self.specs,
            "step": done,
            "synced": self.synced,
            "flat": self.flat.detach(),
            "shapes": self.shapes,
            "orders": self.orders,
            "dormant": {name: self.shared[name].detach() for name in self.dormant},
            "optimizer": self.optimizer.state_dict(),
            "clipper": self.clipper.state_dict() if self.clipper is not None else None,
            "lr_rows": self.lr_rows,
            "active": self.active,
            "rows": self.rows,
            "buffers": [buf[:, :done] for buf in (self.loss_buf, self.norm_buf, self.threshold_buf, self.skip_buf)],
            "losses": self.losses[:, : self.synced],
            "evals": self.evals,
            "finished": [*self.finished, *handing_out],
            "eval_terms": self.eval_terms.state_dict(),
            "looped_ops": sorted(self.looped_ops),
            "row_shared": self.row_shared,
            "layers": self.layers.state(),
            "sharpness": self.sharpness.records,
            "seeds": self.seeds.state(),
            "rng": rng_state(self.device),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        device = self.device
        self.steps_done, self.synced = state["step"], state["synced"]
        self.shapes, self.orders = state["shapes"], state["orders"]
        for name, value in state["dormant"].items():
            self.shared[name] = value.to(device).requires_grad_()
            self.dormant.append(name)
        self.flat.data = state["flat"].to(device)
        self._split_flat()
        self.optimizer.load_state_dict(state["optimizer"])
        if self.clipper is not None:
            self.clipper.load_state_dict(state["clipper"])
        self.lr_rows = state["lr_rows"].to(device)
        self.active, self.rows = state["active"], state["rows"].to(device)
        buffers = (self.loss_buf, self.norm_buf, self.threshold_buf, self.skip_buf)
        for buf, saved in zip(buffers, state["buffers"], strict=False):  # an older checkpoint has no skip_buf
            buf[:, : self.steps_done] = saved.to(device)
        self.losses[:, : self.synced] = state["losses"]
        self.evals = state["evals"]
        self.finished = list(state["finished"])
        self.eval_terms.load_state_dict(state["eval_terms"])
        self.looped_ops.update(state["looped_ops"])
        self.row_shared = {name: value.to(device) for name, value in state["row_shared"].items()}
        self.layers.restore(state["layers"], device)
        self.sharpness.records = state.get("sharpness", self.sharpness.records)
        self.seeds.restore(state["seeds"])
        set_rng_state(state["rng"], device)


def _per_row(value: Any, rows: int) -> bool:
    """An optimizer state tensor with a row per trial (momentum, moment estimates), not a shared scalar."""
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows
