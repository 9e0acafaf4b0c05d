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
    from collections.abc import Callable

    from stabsweep.config.schema import RayConfig
    from stabsweep.records import TrialJob, TrialResult, TrialSpec

    Progress4 = Callable[[int, int, int, str], None]  # progress(step, length, running, task)


class RayExecutor:
    """Trials as Ray tasks; each task runs its share as one batch."""

    def __init__(self, config: RayConfig) -> None:
        self.config = config
        self.placements: dict[int, str] = {}  # trial id -> the Ray node that ran it

    def run(self, specs: list[TrialSpec], job: TrialJob, progress: Progress4 | None = None) -> Iterator[TrialResult]:
        """Each task's results as it finishes; with ``progress``, the running tasks' steps too.

        A task whose node or worker process is lost runs again on another node (Ray's own
        retry, ``execution.ray.max_retries`` times) and continues from its share's last
        checkpoint when the run folder is on storage every node sees (training/checkpoint.py).
        Results travel only when a task ends, so a lost task has reported nothing: nothing
        finished is lost or written twice.
        """
        import dataclasses

        if not specs:
            return
        ray = connect(self.config.address)
        resources = {"num_cpus": self.config.num_cpus, "num_gpus": self.config.num_gpus}
        # Ray gives a GPU task its GPU as CUDA_VISIBLE_DEVICES; the driver may have none.
        job = dataclasses.replace(job, device="cuda" if self.config.num_gpus > 0 else "cpu")
        units = split(specs, self._parallel_tasks(ray, len(specs)), job)
        task = ray.remote(run_unit_on_node).options(**resources, max_retries=self.config.max_retries)
        lost_kinds = _lost_kinds(ray)
        steps, pending = None, {}
        seen: dict[str, tuple[int, int]] = {}  # task -> (step, length) last reported
        try:
            steps = _steps_queue(ray) if progress is not None else None
            pending = {task.remote(unit, job, steps): unit for unit in units}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=None if steps is None else PROGRESS_POLL_S)
                if steps is not None:
                    _report(steps, progress, seen)
                if not ready:
                    continue
                unit, finished = pending.pop(ready[0]), ready[0].task_id().hex()
                if finished in seen:  # the display stops counting its trials as running
                    length = seen.pop(finished)[1]
                    progress(length, length, 0, finished)
                try:
                    node, results = ray.get(ready[0])
                    self.placements.update({spec.trial_id: node for spec in unit})
                except lost_kinds as exc:  # retries spent: the unit's trials are failed, the sweep goes on
                    results = lost(unit, exc)
                yield from results
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if steps is not None:
                steps.shutdown(force=True)

    def _parallel_tasks(self, ray: object, count: int) -> int:
        if self.config.trials_per_task:
            return math.ceil(count / self.config.trials_per_task)
        available = ray.cluster_resources()  # type: ignore[attr-defined]
        slots = available.get("CPU", 1) / self.config.num_cpus
        if self.config.num_gpus > 0:
            slots = min(slots, available.get("GPU", 0) / self.config.num_gpus)
        return max(1, int(slots))


PROGRESS_POLL_S = 0.25  # how often the driver reads the tasks' steps, as the process executor does


def _lost_kinds(ray: object) -> tuple[type[BaseException], ...]:
    """Ray's errors for a task that could not finish for the cluster's sake, not its code's: its
    worker or node died, Ray's memory monitor killed it, its result was lost, or no node can
    run it any more. Each costs the unit's trials (FAILED results), not the sweep."""
    names = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "ObjectLostError", "TaskUnschedulableError")
    return tuple(getattr(ray.exceptions, name) for name in names if hasattr(ray.exceptions, name))  # type: ignore[attr-defined]


def _steps_queue(ray: object) -> object | None:
    """Where remote tasks put their steps: Ray's actor-backed queue, on the driver's own node
    (which lives as long as the sweep does) and taking no CPU from the trials; None, and no
    progress, where Ray cannot start it (a side feature never stops a sweep)."""
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        here = ray.get_runtime_context().get_node_id()  # type: ignore[attr-defined]
        strategy = NodeAffinitySchedulingStrategy(here, soft=True)
        return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": strategy})
    except Exception:  # noqa: BLE001 - e.g. Ray Client, where the driver has no node of its own
        return None


def _report(steps: object, progress: Progress4, seen: dict[str, tuple[int, int]]) -> None:
    """Hand the steps the tasks reported since the last look to ``progress``."""
    try:
        count = steps.qsize()  # type: ignore[attr-defined]
        reports = steps.get_nowait_batch(count) if count else []  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - the queue is gone: the finished trials still show
        return
    for task, step, length, running in reports:
        seen[task] = (step, length)
        progress(step, length, running, task)


def run_unit_on_node(specs: list[TrialSpec], job: TrialJob, steps: object = None) -> tuple[str, list[TrialResult]]:
    """A Ray task: its share of the trials, and the node it ran on.

    With ``steps`` (a Ray queue), the loop's step goes there as often as the engine reports
    it (a few times a second, training/common.py), never once per step.
    """
    import ray

    context = ray.get_runtime_context()
    progress = None
    if steps is not None:
        task, working = context.get_task_id(), [True]

        def progress(step: int, length: int, running: int) -> None:
            if working[0]:
                try:  # one round trip to the queue, a few times a second (training/common.py)
                    steps.put_nowait((task, step, length, running))  # type: ignore[attr-defined]
                except Exception:  # noqa: BLE001 - the queue is gone: train on without progress
                    working[0] = False

    return context.get_node_id(), run_unit(specs, job, progress)


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
