"""stabsweep: find where training becomes unstable, then fix it with warmup and clipping.

Automates the instability procedure of the Deep Learning Tuning Playbook. From the command
line: ``stabsweep lr CONFIG`` and the other commands. From Python, one call per command
(``stabsweep.lr(config, factory=build)``, ``stabsweep.tune``, ...), each returning a result
object; ``stabsweep.open_run(path)`` reads a finished run. A workload is a :class:`Workload`.
"""

from stabsweep.api import (
    ClipResult,
    CurvatureResult,
    DoctorResult,
    FindResult,
    LrResult,
    Result,
    Run,
    TuneResult,
    WarmupResult,
    clip_report,
    curvature,
    doctor,
    export,
    find,
    lr,
    open_run,
    report,
    spikes,
    tune,
    warmup,
)
from stabsweep.errors import RunFailed, UserError
from stabsweep.version import __version__
from stabsweep.workloads.base import TensorBatches, Workload

__all__ = [
    "ClipResult",
    "CurvatureResult",
    "DoctorResult",
    "FindResult",
    "LrResult",
    "Result",
    "Run",
    "RunFailed",
    "TensorBatches",
    "TuneResult",
    "UserError",
    "WarmupResult",
    "Workload",
    "__version__",
    "clip_report",
    "curvature",
    "doctor",
    "export",
    "find",
    "lr",
    "open_run",
    "report",
    "spikes",
    "tune",
    "warmup",
]
