"""stabsweep: find where training becomes unstable, then fix it with warmup and clipping.

Automates the instability procedure of the Deep Learning Tuning Playbook. The public API
for user workloads is :class:`Workload`; everything else is driven from the CLI.
"""

from stabsweep.version import __version__
from stabsweep.workloads.base import TensorBatches, Workload

__all__ = ["TensorBatches", "Workload", "__version__"]
