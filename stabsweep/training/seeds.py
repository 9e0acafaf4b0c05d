"""Several seeds in one vectorized batch: each its own weights, data and random numbers.

A trial with seed k must be the training it would be alone: the factory called with k (its
initial weights, its data order), and the random numbers it would draw. Trials of one seed
form a *group*; a batch's rows are ordered by seed, so each group is a contiguous run of rows.

- **Data.** Each group has its own stream over its own workload's ``train_data``. Alone, the
  global random state is what a DataLoader draws from when an epoch starts; here each group
  keeps its own random state (taken right after its factory call, as alone) and an epoch of
  its stream starts under it.
- **The forward pass.** When the model draws no random numbers in training (no dropout), one
  ``vmap`` call runs every row on its own group's batch, stacked along the trial axis. When it
  does, masks must come from each seed's own stream, as alone: each group then runs its own
  ``vmap`` call (masks shared within the group, as one seed's trials share them) under its own
  torch random state. Which case holds is seen at the first step, by whether the first group's
  forward moved its random state.

With one seed there is one group, and the global random state is its own, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stabsweep.training.common import DataStream, place_data, rng_state, to_device
from stabsweep.training.vmap_support import Bound, NotVectorizable
from stabsweep.workloads.base import Workload


@dataclass
class SeedGroup:
    seed: int
    workload: Workload
    bound: Bound
    stream: DataStream
    rng: dict[str, Any] | None  # its own random state, when several seeds share the batch
    data_on_device: bool
    eval_on_device: bool


class SeedGroups:
    """The groups of a batch whose trials ``seeds`` (one per row, sorted) come from ``factory``."""

    def __init__(self, seeds: list[int], factory: Callable[[int], Workload], device: torch.device) -> None:
        self.device = device
        self.groups: list[SeedGroup] = []
        several = len(set(seeds)) > 1
        for seed in sorted(set(seeds)):
            workload = factory(seed)
            own = rng_state(device) if several else None  # as alone: the state the factory left
            self.groups.append(
                SeedGroup(
                    seed,
                    workload,
                    Bound(workload.model.to(device)),
                    DataStream(workload.train_data, device, own),
                    own,
                    place_data(workload.train_data, device),
                    place_data(workload.eval_data, device),
                )
            )
        index = {g.seed: i for i, g in enumerate(self.groups)}
        self.row_group = np.array([index[seed] for seed in seeds])  # the group of each active row
        self._check_same_architecture()
        self.random: bool | None = None if several else False  # the model draws random numbers (seen at step 1)

    @property
    def template(self) -> SeedGroup:
        return self.groups[0]

    def _check_same_architecture(self) -> None:
        shapes = [{n: (p.shape, p.dtype) for n, p in g.bound.named_parameters()} for g in self.groups]
        for group, found in zip(self.groups[1:], shapes[1:], strict=True):
            if found != shapes[0]:
                raise NotVectorizable(
                    f"the factory builds a model of other parameters or shapes for seed {group.seed} than for seed "
                    f"{self.groups[0].seed}: its trials cannot share rows"
                )

    def ranges(self) -> list[tuple[SeedGroup, int, int]]:
        """Each group with the slice of active rows it holds (contiguous: rows are sorted by seed)."""
        out = []
        for g in np.unique(self.row_group):
            rows = np.flatnonzero(self.row_group == g)
            out.append((self.groups[g], int(rows[0]), int(rows[-1]) + 1))
        return out

    def keep(self, mask: np.ndarray) -> None:
        self.row_group = self.row_group[mask]

    def next_batch(self, group: SeedGroup) -> Any:
        batch = next(group.stream)
        return batch if group.data_on_device else to_device(batch, self.device)

    @contextmanager
    def torch_rng(self, group: SeedGroup) -> Iterator[None]:
        """The group's own torch random state in force (for its dropout masks), then kept."""
        if group.rng is None:
            yield
            return
        outside = torch.get_rng_state()
        torch.set_rng_state(group.rng["torch"])
        try:
            yield
        finally:
            group.rng["torch"] = torch.get_rng_state()
            torch.set_rng_state(outside)

    def stacked(self, batches: list[Any], ranges: list[tuple[SeedGroup, int, int]]) -> Any | None:
        """The active groups' batches (in ``ranges`` order) as one batch with a leading row axis,
        each row its group's; None when they cannot stack (a last, shorter batch in one group)."""
        index = torch.cat([torch.full((end - start,), k) for k, (_, start, end) in enumerate(ranges)])
        try:
            return _stack(batches, index.to(self.device))
        except (RuntimeError, ValueError):
            return None

    def state(self) -> dict[str, Any]:
        return {
            "streams": [g.stream.state() for g in self.groups],
            "rng": [g.rng for g in self.groups],
            "row_group": self.row_group,
            "random": self.random,
        }

    def restore(self, state: dict[str, Any]) -> None:
        for group, stream, rng in zip(self.groups, state["streams"], state["rng"], strict=True):
            group.stream.restore(stream)
            group.rng = rng
            group.stream.rng = rng
        self.row_group, self.random = state["row_group"], state["random"]


def _stack(batches: list[Any], index: torch.Tensor) -> Any:
    """Stack corresponding tensors of the groups' batches, then pick each row's group."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(batches)[index]
    if isinstance(first, (list, tuple)):
        return type(first)(_stack([b[i] for b in batches], index) for i in range(len(first)))
    if isinstance(first, dict):
        return {key: _stack([b[key] for b in batches], index) for key in first}
    if any(b != first for b in batches):
        raise ValueError("the groups' batches differ in a value that is not a tensor")
    return first
