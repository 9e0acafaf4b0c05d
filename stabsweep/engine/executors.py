"""Executors run a list of trials and yield each result as soon as it is back.

- ``local``: in this process (a vectorized batch uses every core through torch's threads);
- ``process``: a pool of worker processes, one per core, or one per GPU with its own
  ``CUDA_VISIBLE_DEVICES``; each worker runs its share of the trials as one batch;
- ``ray``: trials as Ray tasks on a cluster (:mod:`stabsweep.engine.ray_executor`).

Every executor yields :class:`TrialResult` objects in completion order and the caller writes
each one at once, which is what makes an interrupted sweep keep its finished trials. A worker
that dies (out of memory, killed) costs its trials, which come back as FAILED results.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from stabsweep.engine.runner import run_trials
from stabsweep.records import TrialJob, TrialResult, TrialSpec, TrialStatus

if TYPE_CHECKING:
    from stabsweep.training.common import Progress

# In a worker process of the process executor only: where its loop reports its step (set by
# _start_worker), read by the parent's progress display.
_steps_queue: Any = None


def run_unit(specs: list[TrialSpec], job: TrialJob, progress: Progress | None = None) -> list[TrialResult]:
    """A worker's share: its trials, run by the engine, returned together. ``progress`` hears
    the loop's step (a process worker reports into its pool's queue without being told)."""
    if progress is None and _steps_queue is not None:
        pid = os.getpid()

        def progress(step: int, length: int, running: int) -> None:
            _steps_queue.put((pid, step, length, running))

    return list(run_trials(specs, job, progress))


def split(specs: list[TrialSpec], parts: int, job: TrialJob) -> list[list[TrialSpec]]:
    """Trials dealt out round-robin, so each share mixes low and high rates and ends together;
    one trial per share when the engine runs them one at a time anyway. The trials a
    checkpoint continues stay together, as one share."""
    from stabsweep.training.checkpoint import claim

    claimed = [mine for _, mine in claim(specs, job.checkpoint_dir, job.engine)]
    taken = {spec.trial_id for mine in claimed for spec in mine}
    specs = [spec for spec in specs if spec.trial_id not in taken]
    if job.engine == "sequential":
        return claimed + [[spec] for spec in specs]
    parts = max(1, min(parts, len(specs)))
    return claimed + [specs[i::parts] for i in range(parts) if specs[i::parts]]


def lost(specs: list[TrialSpec], exc: BaseException) -> list[TrialResult]:
    """FAILED results for trials whose worker died before it could report them."""
    reason = f"worker lost: {type(exc).__name__}"
    return [TrialResult(s, TrialStatus.FAILED, reason, 0, 0.0, error=f"{type(exc).__name__}: {exc}") for s in specs]


class LocalExecutor:
    """Every trial in this process."""

    def run(self, specs: list[TrialSpec], job: TrialJob, progress: Any = None) -> Iterator[TrialResult]:
        yield from run_trials(specs, job, progress)


class ProcessExecutor:
    """A pool of worker processes on this machine: one per GPU on a GPU, else one per core."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers

    def run(self, specs: list[TrialSpec], job: TrialJob, progress: Any = None) -> Iterator[TrialResult]:
        import concurrent.futures as cf
        import dataclasses
        import multiprocessing
        import queue

        if not specs:
            return
        gpus = _gpu_ids(job.device)
        workers = self.workers or len(gpus) or os.cpu_count() or 1
        units = split(specs, workers, job)
        workers = min(workers, len(units))
        if gpus:  # each worker sees one GPU, as cuda:0
            job = dataclasses.replace(job, device="cuda")
        context = multiprocessing.get_context("spawn")  # fork after torch has started is unsafe
        slots = context.Queue()
        for i in range(workers):
            slots.put(gpus[i % len(gpus)] if gpus else None)
        threads = max(1, (os.cpu_count() or 1) // workers)
        steps = context.Queue() if progress is not None else None
        pool = cf.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(slots, threads, steps)
        )
        try:
            futures = {pool.submit(run_unit, unit, job): unit for unit in units}
            pending = set(futures)
            while pending:
                done, pending = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_COMPLETED)
                while steps is not None:  # the workers' steps since the last look
                    try:
                        pid, step, length, running = steps.get_nowait()
                    except queue.Empty:
                        break
                    progress(step, length, running, pid)
                for future in done:
                    try:
                        results = future.result()
                    except cf.process.BrokenProcessPool as exc:
                        results = lost(futures[future], exc)
                    yield from results
        finally:
            _stop(pool)


def _gpu_ids(device: str) -> list[str]:
    """The GPUs a process pool spreads over: the one named, or every visible one."""
    if not device.startswith("cuda"):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if ":" in device:
        index = int(device.split(":")[1])
        return [visible.split(",")[index] if visible else str(index)]
    import torch

    return visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]


def _start_worker(slots: Any, threads: int, steps: Any) -> None:
    """Runs first in each worker, before torch is imported there."""
    import signal

    global _steps_queue
    _steps_queue = steps
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent()
    gpu = slots.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch

    torch.set_num_threads(threads)  # workers share the cores instead of each taking them all


def _die_with_parent() -> None:
    """On Linux, end this worker when the sweep's process dies, however it dies (``kill -9``
    included): an orphan worker would go on training and saving checkpoints into a folder
    that a resumed sweep is reading. Elsewhere a worker ends when it next asks for work."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _stop(pool: Any) -> None:
    """Shut the pool down without waiting for trials nobody will read (after Ctrl-C)."""
    pool.shutdown(wait=False, cancel_futures=True)
    # ProcessPoolExecutor has no public way to stop running workers before Python 3.14's
    # terminate_workers(); its _processes map is the documented-by-source way to reach them.
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()
