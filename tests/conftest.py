from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

os.environ.setdefault("COLUMNS", "160")  # wide, deterministic rich output in CLI tests

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")


@pytest.fixture(scope="session", autouse=True)
def _local_ray_is_shut_down():
    """The ray executor starts a local Ray (2 CPUs here) on first use; stop it after the session."""
    yield
    if importlib.util.find_spec("ray") is not None:
        import sys

        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()


@pytest.fixture
def smoke_config() -> Path:
    return CONFIGS / "smoke.yaml"


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a YAML config (text) to tmp_path and return its path."""

    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


MINIMAL = """\
name: t
workload: {name: mlp, args: {hidden: 16, depth: 1}, batch_size: 32}
train: {steps: 30, eval_every: 10, optimizer: {name: momentum}}
lr_sweep: {lrs: [0.05, 50.0]}
"""
