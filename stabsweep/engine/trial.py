"""A trial: what to run (:class:`TrialSpec`) and what happened (:class:`TrialResult`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from stabsweep.config.schema import ClipConfig, ScheduleConfig


class TrialStatus(str, enum.Enum):
    """How a trial ended (DESIGN §5). DIVERGED and LEARNED_NOTHING are infeasible."""

    OK = "ok"
    UNSTABLE = "unstable"  # feasible, but the loss went up during training
    DIVERGED = "diverged"  # non-finite loss, or loss above divergence_factor × initial
    LEARNED_NOTHING = "learned_nothing"  # final loss not below the initial loss, or at chance
    FAILED = "failed"  # raised: out of memory, a bug in a user factory

    @property
    def feasible(self) -> bool:
        return self in (TrialStatus.OK, TrialStatus.UNSTABLE)


@dataclass(frozen=True)
class TrialSpec:
    """One training run of a sweep; trials differ only in these fields."""

    trial_id: int
    lr: float  # the base learning rate (the schedule's peak)
    seed: int
    steps: int  # total steps, warmup included
    eval_every: int
    schedule: ScheduleConfig
    warmup_steps: int = 0  # a linear ramp prepended to the schedule
    clip: ClipConfig | None = None
    columns: dict[str, Any] = field(default_factory=dict)  # swept values written to trials.csv


@dataclass(frozen=True)
class StepLog:
    """Per-step records of one trial, as arrays (one entry per step that ran)."""

    lr: np.ndarray
    train_loss: np.ndarray
    grad_norm: np.ndarray  # the global norm before clipping
    clip_threshold: np.ndarray  # NaN where no clipping was in force
    clipped: np.ndarray  # bool


@dataclass(frozen=True)
class TrialResult:
    spec: TrialSpec
    status: TrialStatus
    reason: str
    steps_run: int
    wall_seconds: float
    best_eval_loss: float | None = None
    final_train_loss: float | None = None
    diverged_step: int | None = None
    error: str | None = None
    steps: StepLog | None = None
    evals: list[dict[str, float]] = field(default_factory=list)  # {"step", "eval_loss", ...}
    engine: str = "sequential"  # "vectorized" when it ran in a batch of trials
    fallback: str | None = None  # why a trial meant for a batch ran alone
    looped_ops: tuple[str, ...] = ()  # ops its batch ran trial by trial: vmap has no batching rule for them

    def row(self) -> dict[str, Any]:
        """The trials.csv row (DESIGN §4)."""
        return {
            "trial_id": self.spec.trial_id,
            "lr": self.spec.lr,
            **self.spec.columns,
            "seed": self.spec.seed,
            "status": self.status.value,
            "reason": self.reason,
            "best_eval_loss": self.best_eval_loss,
            "final_train_loss": self.final_train_loss,
            "diverged_step": self.diverged_step,
            "steps_run": self.steps_run,
            "wall_seconds": round(self.wall_seconds, 3),
            "error": self.error,
        }
