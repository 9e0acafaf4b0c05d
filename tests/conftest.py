from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

os.environ.setdefault("COLUMNS", "160")  # wide, deterministic rich output in CLI tests


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
