"""The records every layer shares: what a trial is, how it ended, and what it logged.

This module sits at the bottom of the import graph and imports nothing of the package, so
the engine, the training loops, the analysis and the procedures can all depend on it without
depending on one another (the model is Optuna's ``trial/_state.py`` and ``_frozen.py``).
A status is :class:`TrialStatus` everywhere; which statuses are feasible, infeasible or a
sign of instability is said here once, and a status read back from a CSV file is turned
into the enum by :meth:`TrialStatus.of`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class TrialStatus(str, enum.Enum):
    """How a trial ended (the detection rules in ``analysis/rules.py`` decide which)."""

    OK = "ok"
    UNSTABLE = "unstable"  # feasible, but the loss went up during training
    DIVERGED = "diverged"  # non-finite loss, or loss above divergence_factor × initial
    LEARNED_NOTHING = "learned_nothing"  # final loss not below the initial loss, or at chance
    FAILED = "failed"  # raised: out of memory, a bug in a user factory

    def __str__(self) -> str:  # what a CSV cell and a message show
        return self.value

    @classmethod
    def of(cls, value: Any) -> TrialStatus:
        """The status a CSV cell or a summary holds, as the enum."""
        return value if isinstance(value, cls) else cls(str(value))

    @property
    def feasible(self) -> bool:
        """Trained, and its objective counts: ok, or unstable but still learning."""
        return self in FEASIBLE

    @property
    def infeasible(self) -> bool:
        """Trained, but its objective means nothing: diverged, or learned nothing."""
        return self in INFEASIBLE

    @property
    def instability(self) -> bool:
        """The loss went up: it diverged, or it rose and recovered (unstable)."""
        return self in INSTABILITY

    @property
    def failing(self) -> bool:
        """The rate is past what trains well: diverged, unstable or learned nothing.
        The unstable base rate is the smallest rate above lr* with a failing trial."""
        return self in FAILING


FEASIBLE = frozenset({TrialStatus.OK, TrialStatus.UNSTABLE})
INFEASIBLE = frozenset({TrialStatus.DIVERGED, TrialStatus.LEARNED_NOTHING})
INSTABILITY = frozenset({TrialStatus.DIVERGED, TrialStatus.UNSTABLE})
FAILING = INSTABILITY | {TrialStatus.LEARNED_NOTHING}


@dataclass(frozen=True)
class TrialSpec:
    """One training run of a sweep; trials differ only in these fields."""

    trial_id: int
    lr: float  # the base learning rate (the schedule's peak)
    seed: int
    steps: int  # total steps, warmup included
    eval_every: int
    schedule: Any  # config.schema.ScheduleConfig
    warmup_steps: int = 0  # a linear ramp prepended to the schedule
    clip: Any = None  # config.schema.ClipConfig, or None for no clipping
    columns: dict[str, Any] = field(default_factory=dict)  # swept values written to trials.csv
    run_steps: int | None = None  # this trial is the first `steps` of a run this long (the early check)
    skip: Any = None  # config.schema.SkipSpikesConfig: skip a spike's update (training/skipping.py), or None


@dataclass(frozen=True)
class TrialJob:
    """What all trials of one sweep share: the workload, optimizer, rules, device and engine."""

    factory: Any  # workloads.factory.WorkloadFactory: called with a seed, returns a Workload
    optimizer: Any  # config.schema.OptimizerConfig
    detect: Any  # config.schema.DetectConfig
    device: str  # a resolved torch device string, e.g. "cpu" or "cuda:0"
    engine: str = "auto"  # auto | vectorized | sequential
    max_batch: int = 64  # most trials in one vectorized computation
    checkpoint_dir: str | None = None  # where a running batch saves itself; None: never
    checkpoint_every: float = 0.0  # seconds between saves; 0: never
    log_layers_every: int = 0  # per-layer norms every this many steps (layers.csv); 0: never
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast of the forward (fp16 with a gradient scaler)
    sharpness_every: int = 0  # the top Hessian eigenvalue every this many steps (sharpness.csv); 0: never
    sharpness_iterations: int = 20  # power iterations per measurement (warm-started)


@dataclass(frozen=True)
class StepLog:
    """Per-step records of one trial, as arrays (one entry per step that ran)."""

    lr: Any  # np.ndarray of float
    train_loss: Any
    grad_norm: Any  # the global norm before clipping
    clip_threshold: Any  # NaN where no clipping was in force
    clipped: Any  # bool


@dataclass(frozen=True)
class LayerLog:
    """Per-layer records of one trial at its logged steps: one column per parameter tensor."""

    steps: Any  # np.ndarray [K] of 1-based steps
    layers: list[str]  # parameter names
    grad_norm: Any  # [K, L] before clipping
    weight_norm: Any  # [K, L] before the step
    update_ratio: Any  # [K, L] ‖Δw‖ / ‖w‖ of the step


@dataclass(frozen=True)
class TrialResult:
    """A finished trial: immutable, written to the results folder as soon as it exists."""

    spec: TrialSpec
    status: TrialStatus
    reason: str
    steps_run: int
    wall_seconds: float
    best_eval_loss: float | None = None
    final_train_loss: float | None = None
    diverged_step: int | None = None
    instability: str | None = None  # "early" or "mid-training", for a diverged or unstable trial
    instability_step: int | None = None  # where the divergence, spike or rise was detected (1-based)
    spike_step: int | None = None  # a batch whose loss jumped above the divergence bar and fell back at once
    error: str | None = None
    steps: StepLog | None = None
    layers: LayerLog | None = None
    evals: list[dict[str, float]] = field(default_factory=list)  # {"step", "eval_loss", ...}
    engine: str = "sequential"  # "vectorized" when it ran in a batch of trials
    fallback: str | None = None  # why a trial meant for a batch ran alone
    looped_ops: tuple[str, ...] = ()  # ops its batch ran trial by trial: vmap has no batching rule for them
    notes: tuple[str, ...] = ()  # side features that were switched off for this trial, and why
    skipped_steps: int | None = None  # fp16: steps the gradient scaler skipped (inf or NaN gradients)
    # (step, sharpness, residual) per measurement, step 0-based: the weights before update step + 1
    # (training/curvature.py); sharpness of P⁻¹H for an adaptive optimizer; None when not logged
    sharpness: tuple[tuple[int, float, float], ...] | None = None

    @property
    def clipped_fraction(self) -> float | None:
        """The share of its steps this trial clipped; None when it trained without clipping."""
        if self.spec.clip is None or self.steps is None or not self.steps_run:
            return None
        return round(float(self.steps.clipped.mean()), 6)

    def row(self) -> dict[str, Any]:
        """The trials.csv row (docs/contract.md, "Output files")."""
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
            "instability": self.instability,
            "instability_step": self.instability_step,
            "spike_step": self.spike_step,
            "steps_run": self.steps_run,
            "clipped_fraction": self.clipped_fraction,
            "skipped_steps": self.skipped_steps,
            "wall_seconds": round(self.wall_seconds, 3),
            "error": self.error,
        }
