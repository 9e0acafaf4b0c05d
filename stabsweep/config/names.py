"""The names a config and the command line share, kept free of pydantic so ``--help`` is instant."""

from __future__ import annotations

from typing import Literal

EngineName = Literal["auto", "vectorized", "sequential"]  # how a batch of trials runs
ExecutorName = Literal["local", "process", "ray", "slurm"]  # where trials run
Tracker = Literal["tensorboard", "mlflow"]  # where export and --log-to write a run
SEEDS_KEYS = {  # the config keys --seeds (the API's seeds=) sets, per command
    "lr": ("lr_sweep.seeds",),
    "warmup": ("warmup_sweep.seeds",),
    "clip": ("clip_sweep.seeds",),
    "find": ("find.seeds",),
    "tune": ("lr_sweep.seeds", "warmup_sweep.seeds", "clip_sweep.seeds"),
}
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"  # config `device:` and --device
DOCTOR_CHECKS = (  # stabsweep doctor's checks, in the order they run (summary.json names them)
    "data_finite",
    "labels_in_range",
    "batch_outliers",
    "initial_loss",
    "finite_gradients",
    "overfit_one_batch",
    "gradient_check",
    "dead_units",
    "update_ratio",
    "layer_grad_norms",
)
