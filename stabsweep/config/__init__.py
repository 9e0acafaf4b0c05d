"""Sweep definitions: the YAML schema, loading, overrides and clear errors."""

from stabsweep.config.loader import dump_config, load_config, parse_overrides
from stabsweep.config.schema import (
    ClipConfig,
    Config,
    DetectConfig,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
    WorkloadConfig,
)

__all__ = [
    "ClipConfig",
    "Config",
    "DetectConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "WorkloadConfig",
    "dump_config",
    "load_config",
    "parse_overrides",
]
