"""The workload API (docs/contract.md, "Workloads"): what a factory returns, and in-memory batches.

Kept free of a module-level torch import so ``import stabsweep`` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class Workload:
    """Everything one trial needs to train a model.

    ``train_data`` and ``eval_data`` are iterables of ``(inputs, targets)`` batches; a
    DataLoader is fine, and ``train_data`` is re-iterated as epochs. The objective is
    ``loss_fn(model(inputs), targets)``, or ``loss(model, batch)`` for anything more complex.

    Evaluation reports the loss, and for ``loss_fn`` workloads also:

    - ``eval_accuracy`` where the shapes say it is well defined: integer targets, and outputs
      with one more (last) dimension than the targets, holding one score per class
      (``[N, C]`` for ``[N]``, ``[N, T, V]`` for ``[N, T]``); negative targets (ignored
      labels) do not count. ``accuracy=False`` turns it off.
    - one ``eval_<name>`` per entry of ``metrics``: ``fn(outputs, targets)`` returning a scalar
      tensor (the batch's mean), averaged over the eval data.

    A metric is a side feature: one that raises is left out, with a note, and never fails a trial.
    ``num_classes`` (C) lets the rules recognise a classifier stuck at chance, ln C; without it,
    C is the outputs' last dimension when the accuracy rule above holds, and unknown otherwise.
    """

    model: torch.nn.Module
    train_data: Iterable[Any]
    eval_data: Iterable[Any] | None = None
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    loss: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None
    num_classes: int | None = None
    accuracy: bool = True
    metrics: dict[str, Callable[[Any, Any], torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        if (self.loss_fn is None) == (self.loss is None):
            raise TypeError("Workload needs exactly one of loss_fn(outputs, targets) or loss(model, batch)")
        if self.metrics and self.loss is not None:
            raise TypeError("Workload metrics read (outputs, targets): they need loss_fn, not loss(model, batch)")


class TensorBatches:
    """Mini-batches of in-memory tensors, reshuffled each epoch from a fixed seed.

    Built-in workloads use it instead of a DataLoader: for data that fits in memory it has no
    per-batch worker or collate overhead, and ``to(device)`` moves the whole set once so the
    training step does no host-to-device copy.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self._epoch = 0

    def __len__(self) -> int:
        n = len(self.inputs)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def to(self, device: torch.device) -> TensorBatches:
        self.inputs, self.targets = self.inputs.to(device), self.targets.to(device)
        return self

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        import torch

        n = len(self.inputs)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self._epoch)
            order = torch.randperm(n, generator=generator).to(self.inputs.device)
        else:
            order = torch.arange(n, device=self.inputs.device)
        self._epoch += 1
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.inputs[index], self.targets[index]
