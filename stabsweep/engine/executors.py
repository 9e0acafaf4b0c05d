"""Executors run a list of trials and yield each result as soon as it is finished.

Every executor yields :class:`TrialResult` objects in completion order; the caller writes
each one at once, which is what makes an interrupted sweep keep its finished trials.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stabsweep.config.schema import DetectConfig, OptimizerConfig
    from stabsweep.engine.trial import TrialResult, TrialSpec
    from stabsweep.workloads.factory import WorkloadFactory


@dataclass(frozen=True)
class TrialJob:
    """What all trials of one sweep share: the workload, optimizer, rules and device."""

    factory: WorkloadFactory
    optimizer: OptimizerConfig
    detect: DetectConfig
    device: str  # a resolved torch device string, e.g. "cpu" or "cuda:0"


class LocalExecutor:
    """One trial after another in this process."""

    name = "local"

    def run(self, specs: list[TrialSpec], job: TrialJob) -> Iterator[TrialResult]:
        import torch

        from stabsweep.training.trainer import train_trial

        device = torch.device(job.device)
        for spec in specs:
            yield train_trial(spec, job.factory, job.optimizer, job.detect, device)
