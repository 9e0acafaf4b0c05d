"""The config schema (docs/contract.md, "Config"): one YAML file describes workload, training and sweeps.

Every model forbids unknown keys, so a typo is an error rather than a silently ignored
setting. Optimizer and schedule blocks are the exception: their extra keys are keyword
arguments for torch, checked against the real constructor's signature.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from stabsweep.config.names import DEVICE_PATTERN, DOCTOR_CHECKS, EngineName, ExecutorName
from stabsweep.errors import ConfigKeyError, short_repr
from stabsweep.numbers import Float, Int

# Upper bounds that catch a typo (1e26 steps) long before it becomes an allocation error.
MAX_STEPS = 100_000_000
MAX_LR = 1.0e6
MAX_COUNT = 10_000_000  # batch sizes, windows, trials
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"  # a run name: one safe path component


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class WorkloadConfig(_Strict):
    """What to train: a built-in workload by name, or a user factory."""

    name: str | None = None  # built-in: mlp, cnn, transformer
    factory: str | None = None  # "path/to/file.py:build" or "package.module:build"
    args: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the factory
    batch_size: Int = Field(64, ge=1, le=MAX_COUNT)  # passed to the factory as `batch_size`

    @model_validator(mode="after")
    def _one_source(self) -> WorkloadConfig:
        if (self.name is None) == (self.factory is None):
            raise ValueError("give exactly one of 'name' (a built-in workload) or 'factory'")
        if self.name is not None:
            from stabsweep.errors import did_you_mean
            from stabsweep.workloads import BUILTIN_WORKLOADS

            if self.name not in BUILTIN_WORKLOADS:
                hint = did_you_mean(self.name, tuple(BUILTIN_WORKLOADS))
                raise ValueError(
                    f"unknown workload '{self.name}'{hint}; built-ins are "
                    f"{', '.join(BUILTIN_WORKLOADS)}, or give 'factory: file.py:function'"
                )
        if self.factory is not None and ":" not in self.factory:
            raise ValueError("factory must look like 'path/to/file.py:function' or 'module:function'")
        return self


def _builds_torch(info: ValidationInfo) -> bool:
    """Whether validation may build torch objects to let torch judge values: not when reading
    back a config a finished run saved (it was judged then), so reading a run needs no torch."""
    return (info.context or {}).get("build_torch", True)


class OptimizerConfig(BaseModel):
    """A torch.optim optimizer by name; other keys are its keyword arguments."""

    model_config = ConfigDict(extra="allow")

    name: str = "sgd"

    @model_validator(mode="after")
    def _known(self, info: ValidationInfo) -> OptimizerConfig:
        from stabsweep.optim.optimizers import check_optimizer

        check_optimizer(self.name, self.kwargs, build=_builds_torch(info))
        return self

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ScheduleConfig(BaseModel):
    """A learning-rate schedule by name; other keys are its arguments (docs/contract.md, "Config")."""

    model_config = ConfigDict(extra="allow")

    name: str = "constant"

    @model_validator(mode="after")
    def _known(self, info: ValidationInfo) -> ScheduleConfig:
        from stabsweep.optim.schedules import check_schedule

        check_schedule(self.name, self.kwargs, build=_builds_torch(info))
        return self

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ClipConfig(_Strict):
    """Gradient clipping: exactly one of a fixed threshold, a percentile or a z-score rule."""

    threshold: Float | None = Field(None, gt=0)  # fixed λ: g ← λ·g/‖g‖ when ‖g‖ > λ
    percentile: Float | None = Field(None, gt=0, le=100)  # adaptive (AutoClip-style)
    window: Int = Field(1000, ge=1, le=MAX_COUNT)  # how many recent unclipped norms the percentile sees
    zscore: Float | None = Field(None, gt=0, le=1000)  # adaptive (ZClip-style): clip above mean + z·std
    ema_decay: Float = Field(0.97, gt=0, lt=1)  # EMA decay of the z-score rule's mean and variance
    warmup: Int = Field(25, ge=0, le=MAX_STEPS)  # steps the z-score rule only observes before it clips

    @model_validator(mode="after")
    def _exactly_one(self) -> ClipConfig:
        given = [k for k in ("threshold", "percentile", "zscore") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'threshold', 'percentile' or 'zscore'")
        return self


class SkipSpikesConfig(_Strict):
    """train.skip_spikes: skip the update of a spike (training/skipping.py; OLMo-core's rule)."""

    sigma: Float = Field(6.0, gt=0, le=1e6)  # a loss or gradient norm this many σ above the window's mean
    window: Int = Field(128, ge=2, le=MAX_STEPS)  # the steps before it; judged once half full


class TrainConfig(_Strict):
    steps: Int = Field(1000, ge=1, le=MAX_STEPS)  # max_train_steps
    eval_every: Int = Field(50, ge=1, le=MAX_STEPS)  # evaluate after every this many steps
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    clip: ClipConfig | None = None  # null | number | {percentile: 90, window: 1000} | {zscore: 2.5}
    warmup_steps: Int = Field(0, ge=0, le=MAX_STEPS)  # a linear warmup prepended to the schedule (steps + this in all)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast of the forward; fp16 adds a gradient scaler
    log_layers: bool = False  # per-layer gradient norm, weight norm and update ratio in layers.csv
    log_layers_every: Int = Field(10, ge=1, le=MAX_STEPS)  # ... every this many steps
    skip_spikes: SkipSpikesConfig | None = None  # {sigma: 6, window: 128}: skip a spike's update; null: never
    log_sharpness_every: Int = Field(0, ge=0, le=MAX_STEPS)  # the Hessian's top eigenvalue every N steps; 0: never

    @field_validator("optimizer", "schedule", mode="before")
    @classmethod
    def _name_is_enough(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value  # `optimizer: adam` means {name: adam}

    @field_validator("clip", mode="before")
    @classmethod
    def _number_is_threshold(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"threshold": value}
        return value


class LogGrid(_Strict):
    min: Float = Field(gt=0, le=MAX_LR)
    max: Float = Field(gt=0, le=MAX_LR)
    num: Int = Field(ge=2, le=1000)

    @model_validator(mode="after")
    def _ordered(self) -> LogGrid:
        if self.max <= self.min:
            raise ValueError(f"max ({self.max:g}) must be greater than min ({self.min:g})")
        return self

    def values(self) -> list[float]:
        lo, hi = math.log10(self.min), math.log10(self.max)
        step = (hi - lo) / (self.num - 1)
        return [float(f"{10 ** (lo + i * step):.6g}") for i in range(self.num)]


def positive_numbers(value: Any, what: str, integer: bool = False, top: float = MAX_LR) -> list[Any]:
    """A non-empty list of finite positive numbers (integers when ``integer``), each ≤ ``top``;
    anything else is an error naming the first bad entry by its index."""
    kind = "positive integers" if integer else "positive numbers"
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of {what} ({kind})")
    for i, item in enumerate(value):
        number = isinstance(item, (int, float)) and not isinstance(item, bool)
        if not number or not math.isfinite(item) or item <= 0 or (integer and item != int(item)) or item > top:
            raise ConfigKeyError(f"[{i}]", f"expected a {kind[:-1]} up to {top:g} (got {short_repr(item)})")
    return [int(v) for v in value] if integer else [float(v) for v in value]


Seeds = Annotated[Int, Field(ge=1, le=1000)]  # trials per setting: seeds seed, seed+1, ..., seed+N-1


class LrSweepConfig(_Strict):
    # log-spaced, a list, or "auto": the grid a range test proposes (stabsweep find)
    lrs: LogGrid | list[float] | Literal["auto"] = Field(default_factory=lambda: LogGrid(min=1e-4, max=10, num=11))
    seeds: Seeds = 1  # seeds per rate; instability becomes a probability per rate
    early_check_steps: Int = Field(500, ge=1, le=MAX_STEPS)  # length of --early-check's run
    early_check_multiplier: Float = Field(2.0, gt=0, le=MAX_LR)  # --early-check trains at this × best_lr

    @field_validator("lrs", mode="before")
    @classmethod
    def _grid_or_list(cls, value: Any) -> Any:
        if isinstance(value, list):
            return positive_numbers(value, "learning rates")
        if value != "auto" and not isinstance(value, (dict, LogGrid)):
            raise ValueError(
                f"expected {{min: X, max: Y, num: N}} (log-spaced), a list of learning rates, or auto "
                f"(got {short_repr(value)})"
            )
        return value

    @property
    def auto(self) -> bool:
        """The grid comes from a range test (``stabsweep find``)."""
        return self.lrs == "auto"

    def values(self) -> list[float]:
        if self.auto:
            raise ValueError("lr_sweep.lrs is auto: the grid comes from the range test")
        return sorted(set(self.lrs.values() if isinstance(self.lrs, LogGrid) else self.lrs))


class FindConfig(_Strict):
    """The learning-rate range test (``stabsweep find``): one short run, the rate growing every step."""

    min_lr: Float = Field(1e-7, gt=0, le=MAX_LR)  # the ramp's first rate
    max_lr: Float = Field(10.0, gt=0, le=MAX_LR)  # its last
    steps: Int = Field(100, ge=10, le=MAX_STEPS)  # the ramp's length
    divergence_factor: Float | None = Field(None, gt=1, le=1e6)  # stop: smoothed > this × its minimum [detect's]
    smoothing: Float = Field(0.95, gt=0, lt=1)  # the smoothed curve: bias-corrected EMA with this beta
    skip_begin: Int = Field(10, ge=0, le=MAX_STEPS)  # the first steps' noise, left out of the suggestions
    suggestion: Literal["valley", "steepest", "minimum_div_10"] = "valley"  # the one used
    eval_every: Int = Field(0, ge=0, le=MAX_STEPS)  # evaluate every this many steps (0: train loss only)
    eval_batches: Int = Field(4, ge=1, le=MAX_COUNT)  # on this many eval batches
    seeds: Seeds = 1  # range tests in one batch; the suggestion reads their median curve

    @model_validator(mode="after")
    def _ordered(self) -> FindConfig:
        if self.min_lr >= self.max_lr:
            raise ValueError(f"min_lr ({self.min_lr:g}) must be below max_lr ({self.max_lr:g})")
        if self.skip_begin >= self.steps:
            raise ValueError(f"skip_begin ({self.skip_begin}) must be below steps ({self.steps})")
        return self


class DoctorConfig(_Strict):
    """``stabsweep doctor``: the checks before any sweep."""

    overfit_steps: Int = Field(200, ge=1, le=MAX_STEPS)  # steps of "overfit one batch"
    update_steps: Int = Field(20, ge=1, le=MAX_STEPS)  # the first steps whose update ratios are read
    gradient_samples: Int = Field(8, ge=1, le=1000)  # elements per module type the gradient check perturbs
    outlier_factor: Float = Field(10.0, gt=1, le=1e6)  # batch_outliers: a batch's loss this × the median's
    scan_seconds: Float = Field(20.0, gt=0, le=1e6)  # batch_outliers reads batches for at most this long
    scan_batches: Int = Field(10_000, ge=1, le=MAX_COUNT)  # ... and at most this many
    skip: list[str] = Field(default_factory=list)  # checks not to run

    @field_validator("skip")
    @classmethod
    def _known_checks(cls, value: list[str]) -> list[str]:
        from stabsweep.errors import did_you_mean

        for i, name in enumerate(value):
            if name not in DOCTOR_CHECKS:
                hint = did_you_mean(name, DOCTOR_CHECKS)
                raise ConfigKeyError(
                    f"[{i}]", f"unknown check '{name}'{hint}; the checks are {', '.join(DOCTOR_CHECKS)}"
                )
        return value


class WarmupSweepConfig(_Strict):
    multipliers: list[float] = Field(default_factory=lambda: [10.0])  # base_lr = m × unstable
    # The playbook's candidates; those above max_fraction × train.steps are dropped.
    warmup_steps: list[int] = Field(default_factory=lambda: [10, 1000, 10000, 100000])
    seeds: Seeds = 1  # seeds per probe; a warmup is recommended when every seed is ok
    max_fraction: Float = Field(0.1, gt=0, le=1)  # candidates above this share of train.steps are dropped
    warn_fraction: Float = Field(0.05, gt=0, le=1)  # warn when the pick exceeds this share
    confirm: bool = True  # run the full-length schedule with the picked warmup

    @field_validator("warmup_steps", mode="before")
    @classmethod
    def _positive_steps(cls, value: Any) -> list[int]:
        return sorted(set(positive_numbers(value, "warmup lengths in steps", integer=True, top=MAX_STEPS)))

    @field_validator("multipliers", mode="before")
    @classmethod
    def _positive_multipliers(cls, value: Any) -> list[float]:
        return sorted(set(positive_numbers(value, "multipliers of the unstable rate")))


class ClipSweepConfig(_Strict):
    percentile: Float = Field(90.0, gt=0, le=100)  # the recommended threshold's percentile
    seeds: Seeds = 1  # seeds per threshold of --sweep (and whose norms the report reads)
    percentiles: list[float] = Field(default_factory=lambda: [50.0, 75.0, 90.0, 99.0])
    aggressive_fraction: Float = Field(0.5, gt=0, le=1)  # more clipped than this: too aggressive

    @field_validator("percentiles", mode="before")
    @classmethod
    def _percentiles(cls, value: Any) -> list[float]:
        return sorted(set(positive_numbers(value, "percentiles", top=100)))


class DetectConfig(_Strict):
    """Thresholds of the detection rules; docs/contract.md, "Detection rules", explains each."""

    divergence_factor: Float = Field(4.0, gt=1, le=1e6)  # diverged: loss > this × initial loss
    smoothing: Int = Field(20, ge=1, le=MAX_STEPS)  # EMA span (steps) of the smoothed training loss
    min_improvement: Float = Field(0.05, ge=0, lt=1)  # learned nothing: final smoothed > (1 - this) × initial
    chance_tolerance: Float = Field(0.05, ge=0, lt=1)  # learned nothing: final smoothed ≥ (1 - this) × ln C
    early_fraction: Float = Field(0.1, gt=0, le=1)  # early instability looks at this share of steps
    early_spike_factor: Float = Field(2.0, gt=1, le=1e6)  # early instability: a loss above this × initial
    rise_fraction: Float = Field(0.25, gt=0, le=1)  # mid-training: a rise giving back this share of progress
    # A batch loss is a noisy sample; these judge a rise against the curve's own noise.
    divergence_patience: Int = Field(1, ge=0, le=MAX_STEPS)  # a loss above the factor must stay this many more steps
    noise_sigma: Float = Field(3.0, ge=0, le=1e6)  # a trend's rise must exceed this × its noise (× √(2 ln(steps/span)))
    spike_ratio: Float = Field(5.0, ge=1, le=1e6)  # a spike counts when this × larger than any other excursion
    # spikes.csv (analysis/spikes.py): a loss or gradient norm this many σ above the window before it
    spike_sigma: Float = Field(6.0, gt=0, le=1e6)
    spike_window: Int = Field(128, ge=2, le=MAX_STEPS)  # ... of this many steps, judged once half full

    @model_validator(mode="after")
    def _spike_below_divergence(self) -> DetectConfig:
        if self.early_spike_factor >= self.divergence_factor:
            raise ValueError(
                f"early_spike_factor ({self.early_spike_factor:g}) must be below "
                f"divergence_factor ({self.divergence_factor:g})"
            )
        return self


class GateConfig(_Strict):
    """What ``--baseline`` fails a run on (docs/contract.md, "The stability gate")."""

    unstable_factor: Float = Field(2.0, ge=1.0, le=MAX_LR)  # the unstable base rate may fall at most this factor
    objective_tolerance: Float = Field(0.05, ge=0.0, le=1e6)  # the best objective may get this much worse (relative)


class RayConfig(_Strict):
    """Where the ray executor runs and what each of its tasks asks for."""

    address: str | None = None  # "auto", "ray://head:10001", ...; default: start a local Ray
    num_cpus: Float = Field(1.0, gt=0, le=1024)  # CPUs per task
    num_gpus: Float = Field(0.0, ge=0, le=64)  # GPUs per task; a fraction lets tasks share a GPU
    trials_per_task: Int | None = Field(None, ge=1, le=MAX_COUNT)  # default: split over the cluster's free slots
    max_retries: Int = Field(3, ge=0, le=100)  # reruns of a task whose node or worker was lost (Ray's retry)


class SlurmConfig(_Strict):
    """The slurm executor: the units of a sweep as one job array through submitit."""

    cluster: Literal["slurm", "local", "debug"] = "slurm"  # submitit's: local and debug try a set-up on this machine
    partition: str | None = None  # sbatch --partition
    time_min: Int = Field(60, ge=1, le=525_600)  # each job's time limit, minutes
    gpus_per_task: Int = Field(0, ge=0, le=64)  # GPUs per job (trials then run on cuda)
    cpus_per_task: Int = Field(1, ge=1, le=1024)
    array_parallelism: Int = Field(64, ge=1, le=100_000)  # jobs of the array running at once
    trials_per_task: Int | None = Field(None, ge=1, le=MAX_COUNT)  # default: a job per array_parallelism share
    additional: dict[str, Any] = Field(default_factory=dict)  # extra sbatch options, e.g. {account: x, qos: y}


class CurvatureConfig(_Strict):
    """The curvature probe (stabsweep curvature) and sharpness along training (train.log_sharpness_every)."""

    batches: Int = Field(4, ge=1, le=10_000)  # training batches whose mean loss's Hessian the probe measures
    tol: Float = Field(1e-3, gt=0, lt=1)  # the probe's relative tolerance (scipy eigsh)
    max_matvecs: Int = Field(300, ge=10, le=100_000)  # Hessian-vector products the probe may spend
    iterations: Int = Field(20, ge=1, le=10_000)  # power iterations per measurement along training


class ExecutionConfig(_Strict):
    """How trials run; never part of what a result means, so --resume may change it."""

    engine: EngineName = "auto"  # auto: vectorized where the model allows
    max_batch: Int = Field(64, ge=1, le=100_000)  # most trials in one vectorized computation
    executor: ExecutorName = "local"
    workers: Int | None = Field(None, ge=1, le=4096)  # process: default one per GPU, else one per core
    checkpoint_every: Float = Field(300.0, ge=0, le=1e7)  # seconds between saves of a running batch; 0: never
    ray: RayConfig = Field(default_factory=RayConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)


class Config(_Strict):
    name: str = Field(min_length=1)  # names the run folder: runs/<name>/
    seed: Int = Field(0, ge=0, le=2**31 - 1)  # every trial's weights and batch order
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    workload: WorkloadConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    lr_sweep: LrSweepConfig = Field(default_factory=LrSweepConfig)
    find: FindConfig = Field(default_factory=FindConfig)
    doctor: DoctorConfig = Field(default_factory=DoctorConfig)
    warmup_sweep: WarmupSweepConfig = Field(default_factory=WarmupSweepConfig)
    clip_sweep: ClipSweepConfig = Field(default_factory=ClipSweepConfig)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    curvature: CurvatureConfig = Field(default_factory=CurvatureConfig)

    _source: str = PrivateAttr(default="<config>")
    _factory_fn: Any = PrivateAttr(default=None)  # a factory callable the Python API was given (api/commands.py)

    @property
    def source(self) -> str:
        """The file this config came from; relative factory paths resolve against its folder."""
        return self._source

    @property
    def factory_fn(self) -> Any:
        """The factory callable given to the Python API that no import path reaches (defined in
        a notebook or a script), or None: ``workload.factory`` then names it only for the record."""
        return self._factory_fn

    @field_validator("device")
    @classmethod
    def _device_syntax(cls, value: str) -> str:
        if not re.fullmatch(DEVICE_PATTERN, value):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps (got {short_repr(value)})")
        return value

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, value: str) -> str:
        if not re.fullmatch(NAME_PATTERN, value) or value in (".", ".."):
            raise ValueError(
                "expected one folder name of letters, digits, '.', '_' and '-', at most 100, starting with a "
                f"letter or digit: it names runs/<name>/ (choose another folder with --out) (got {short_repr(value)})"
            )
        return value
