"""The names a config and the command line share, kept free of pydantic so ``--help`` is instant."""

from __future__ import annotations

from typing import Literal

EngineName = Literal["auto", "vectorized", "sequential"]  # how a batch of trials runs
ExecutorName = Literal["local", "process", "ray"]  # where trials run
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"  # config `device:` and --device
