"""The Ray executor: trials as Ray tasks, on a cluster or on a local Ray.

Each task runs a share of the trials (a vectorized batch, or one trial with the sequential
engine) with the resources the config asks for: ``num_cpus`` and ``num_gpus`` per task, a
fraction of a GPU included, so several small sweeps' tasks can share one GPU. By default the
trials are split into as many tasks as the cluster can run at once.

Workers import stabsweep and the workload factory themselves: on a multi-node cluster,
install stabsweep (and any factory module) on every node; a factory file is read by path.
Ray is an optional extra: ``pip install 'stabsweep[ray]'``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from stabsweep.engine.executors import lost, run_unit, split
from stabsweep.errors import UserError

if TYPE_CHECKING:
    from stabsweep.config.schema import RayConfig
    from stabsweep.records import TrialJob, TrialResult, TrialSpec


class RayExecutor:
    """Trials as Ray tasks; each task runs its share as one batch."""

    def __init__(self, config: RayConfig) -> None:
        self.config = config
        self.placements: dict[int, str] = {}  # trial id -> the Ray node that ran it

    def run(self, specs: list[TrialSpec], job: TrialJob, progress: object = None) -> Iterator[TrialResult]:
        """Ray tasks report when they finish; their steps are not followed (``progress`` is unused)."""
        import dataclasses

        if not specs:
            return
        ray = connect(self.config.address)
        resources = {"num_cpus": self.config.num_cpus, "num_gpus": self.config.num_gpus}
        # Ray gives a GPU task its GPU as CUDA_VISIBLE_DEVICES; the driver may have none.
        job = dataclasses.replace(job, device="cuda" if self.config.num_gpus > 0 else "cpu")
        units = split(specs, self._parallel_tasks(ray, len(specs)), job)
        task = ray.remote(run_unit_on_node).options(**resources)
        pending = {task.remote(unit, job): unit for unit in units}
        try:
            while pending:
                [ready], _ = ray.wait(list(pending), num_returns=1)
                unit = pending.pop(ready)
                try:
                    node, results = ray.get(ready)
                    self.placements.update({spec.trial_id: node for spec in unit})
                except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
                    results = lost(unit, exc)
                yield from results
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def _parallel_tasks(self, ray: object, count: int) -> int:
        if self.config.trials_per_task:
            return math.ceil(count / self.config.trials_per_task)
        available = ray.cluster_resources()  # type: ignore[attr-defined]
        slots = available.get("CPU", 1) / self.config.num_cpus
        if self.config.num_gpus > 0:
            slots = min(slots, available.get("GPU", 0) / self.config.num_gpus)
        return max(1, int(slots))


def run_unit_on_node(specs: list[TrialSpec], job: TrialJob) -> tuple[str, list[TrialResult]]:
    """A Ray task: its share of the trials, and the node it ran on."""
    import ray

    return ray.get_runtime_context().get_node_id(), run_unit(specs, job)


def connect(address: str | None) -> object:
    """Ray, connected: to the cluster at ``address``, or to a local Ray started here.

    A local Ray listens on loopback only. Ray picks its node's address itself and, on Linux,
    picks a routable one, where its GCS, raylet and workers then listen on every interface.
    Ray has no public switch for this; its own rule for Windows and macOS (no clusters, so
    the node is 127.0.0.1 and every server binds to loopback) is what a private, single-host
    sweep wants, so it is turned on for the start of a local Ray. A cluster at an address the
    user gives is theirs to secure.
    """
    local = address is None
    try:
        import ray
        from ray._private import ray_constants
    except ImportError:
        raise UserError("execution.executor: 'ray' needs Ray; install it with pip install 'stabsweep[ray]'") from None
    if ray.is_initialized():
        return ray
    clusters, environ = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(_LOCAL_ONLY)
    if local:  # ray reads the constant when it picks the node address; its processes read the variable
        ray_constants.ENABLE_RAY_CLUSTER = False
        os.environ[_LOCAL_ONLY] = "0"
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except ConnectionError as exc:
        raise UserError(f"execution.ray.address: cannot reach a Ray cluster at {address!r}: {exc}") from None
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clusters
        if environ is None:
            os.environ.pop(_LOCAL_ONLY, None)
        else:
            os.environ[_LOCAL_ONLY] = environ
    return ray


_LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's switch between "cluster" and "this host only"
