"""Sweep definitions: the YAML schema, loading, overrides and clear errors.

The names below are loaded on first use, so importing ``stabsweep.config.names`` (as the
command line does for ``--help``) does not import pydantic.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "dump_config": "loader",
    "load_config": "loader",
    "parse_overrides": "loader",
    "ClipConfig": "schema",
    "Config": "schema",
    "DetectConfig": "schema",
    "OptimizerConfig": "schema",
    "ScheduleConfig": "schema",
    "TrainConfig": "schema",
    "WorkloadConfig": "schema",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stabsweep.config' has no attribute {name!r}")
    return getattr(importlib.import_module(f"stabsweep.config.{_EXPORTS[name]}"), name)
