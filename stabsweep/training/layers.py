"""Per-layer records: each parameter tensor's gradient norm, weight norm and update ratio.

The global gradient norm says *that* training blew up; per-layer norms say *where*. Every
``log_layers_every`` steps a loop records, per trainable parameter tensor, the norm of its
gradient before clipping, the norm of its weights before the step, and the update ratio
‖Δw‖/‖w‖ of the step. The values stay on the device as tensors and reach the host when a
trial's result is built, so logging adds no per-step host sync; steps that are not logged
cost one integer test.

One trial (``TrialLayers``) reads its parameters' own gradients; a batch (``BatchLayers``)
reduces each trial's row of weights into per-layer norms, one norm over a view per layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stabsweep.records import LayerLog


def _ratio(update: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """‖Δw‖/‖w‖, NaN where the weights are all zero (a bias that starts at zero)."""
    return torch.where(weight > 0, update / weight.clamp_min(1e-30), torch.nan)


class TrialLayers:
    """The per-layer log of one trial training ``params`` (named ``names``)."""

    def __init__(self, names: list[str], params: list[torch.Tensor], every: int) -> None:
        self.names, self.params, self.every = names, params, every
        self.records: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._pending: tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]] | None = None

    def due(self, step: int) -> bool:
        return self.every > 0 and (step + 1) % self.every == 0

    def before_step(self) -> None:
        """Norms of the raw gradients (before clipping) and of the weights, and a copy of the weights."""
        with torch.no_grad():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            weights = [p.detach().clone() for p in self.params]
            self._pending = (
                torch.stack(torch._foreach_norm(grads)),
                torch.stack(torch._foreach_norm(weights)),
                weights,
            )

    def after_step(self, step: int) -> None:
        grad, weight, before = self._pending
        with torch.no_grad():
            update = torch.stack(torch._foreach_norm(torch._foreach_sub([p.detach() for p in self.params], before)))
        self.records.append((step + 1, grad, weight, _ratio(update, weight)))
        self._pending = None

    def log(self, steps_run: int) -> LayerLog:
        kept = [r for r in self.records if r[0] <= steps_run]
        return _log(self.names, [r[0] for r in kept], [r[1:] for r in kept])

    def state(self) -> list[tuple]:
        return [(s, g.cpu(), w.cpu(), u.cpu()) for s, g, w, u in self.records]

    def restore(self, records: list[tuple], device: torch.device) -> None:
        self.records = [(s, g.to(device), w.to(device), u.to(device)) for s, g, w, u in records]


class BatchLayers:
    """The per-layer log of a batch of trials, whose weights are rows of one flat tensor."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.names: list[str] = []
        self.spans: list[tuple[int, int]] = []  # each layer's columns of a row: [start, end)
        self.records: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._grad: torch.Tensor | None = None

    def due(self, step: int) -> bool:
        return self.every > 0 and (step + 1) % self.every == 0

    def lay_out(self, spans: list[tuple[str, int, int]], device: torch.device) -> None:
        """Which columns of a row each layer holds: (name, first column, end column) per layer."""
        self.names = [name.removeprefix("model.") for name, _, _ in spans]
        self.spans = [(start, end) for _, start, end in spans]

    def _norms(self, rows: torch.Tensor) -> torch.Tensor:
        """Per trial and layer: the 2-norm of each layer's columns, [trial, layer]. A layer's
        columns are one contiguous span of a row, so each is one norm over a view (an
        ``index_add`` over the columns is 15× slower on the CPU)."""
        return torch.stack([torch.linalg.vector_norm(rows[:, start:end], dim=1) for start, end in self.spans], dim=1)

    def before_clipping(self, flat_grad: torch.Tensor) -> None:
        self._grad = self._norms(flat_grad)

    def after_step(self, step: int, trials: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> None:
        weight = self._norms(before)
        update = self._norms(after - before)
        self.records.append((step + 1, trials.clone(), self._grad, weight, _ratio(update, weight)))

    def log(self, trial: int, steps_run: int) -> LayerLog:
        """Trial ``trial``'s records (its index among the batch's trials) up to its last step."""
        steps, values = [], []
        for step, trials, grad, weight, update in self.records:
            if step > steps_run:
                break
            where = torch.nonzero(trials == trial)
            if where.numel():
                row = int(where[0, 0])
                steps.append(step)
                values.append((grad[row], weight[row], update[row]))
        return _log(self.names, steps, values)

    def keep(self, rows: torch.Tensor) -> None:
        """Nothing to compact: each record kept the trials it was taken for."""

    def state(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "records": [tuple(t.cpu() if torch.is_tensor(t) else t for t in r) for r in self.records],
        }

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        self.names = state["names"]
        self.records = [tuple(t.to(device) if torch.is_tensor(t) else t for t in r) for r in state["records"]]


def _log(names: list[str], steps: list[int], values: list[tuple]) -> LayerLog:
    if not steps:
        empty = np.empty((0, len(names)))
        return LayerLog(np.array([], dtype=int), names, empty, empty, empty)
    grad, weight, update = (torch.stack([v[i] for v in values]).float().cpu().numpy() for i in range(3))
    return LayerLog(np.array(steps), names, grad, weight, update)
