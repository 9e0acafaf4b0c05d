"""The slurm executor: a sweep's units as one SLURM job array, submitted through submitit.

submitit is how PyTorch research code submits to SLURM from Python; its ``AutoExecutor``
also runs the same array on this machine (``cluster: local``, a process per job) or in this
process (``cluster: debug``), which is how the tests run it without SLURM. Each job runs one
unit (``engine/executors.py``'s ``run_unit``: a vectorized batch, or one trial with the
sequential engine) and returns its results; the command waits, writing each job's trials as
the job finishes, and shows the running jobs' steps: each job writes its loop's step to a
small file under ``RUN/slurm/progress/`` every few seconds (:class:`StepFile`), which the
driver reads when it looks at its jobs. A job that fails, times out or is cancelled (preempted) loses only its own
trials: they are not written, the rest are, and the command ends with exit 2 saying which
were lost, so ``--resume`` reruns exactly those. submitit writes each job's logs and pickles
under ``RUN/slurm/`` (on storage every node sees: the run folder). An optional extra:
``pip install 'stabsweep[slurm]'``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stabsweep.engine.executors import run_unit, split
from stabsweep.errors import UserError

if TYPE_CHECKING:
    from stabsweep.config.schema import SlurmConfig
    from stabsweep.records import TrialJob, TrialResult, TrialSpec

POLL_S = 0.5  # how often the driver looks at its jobs (submitit caches squeue's answers itself)
PROGRESS_EVERY_S = 2.0  # a job writes its step at most this often: a small file on shared storage


@dataclasses.dataclass
class StepFile:
    """A job's progress: its loop's step, length and running trials as one line in ``path``,
    rewritten at most every ``every_s`` seconds (written aside and renamed, so the driver never
    reads half a line). Progress is a side feature: a write that fails is skipped, never fatal."""

    path: Path
    every_s: float  # PROGRESS_EVERY_S as the driver read it: the job's process sees only this copy
    last: float = -math.inf

    def __call__(self, step: int, length: int, running: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            partial.write_text(f"{step} {length} {running}\n")
            os.replace(partial, self.path)
        except OSError:
            pass

    def read(self) -> tuple[int, int, int] | None:
        """The last step written, if any."""
        try:
            step, length, running = (int(x) for x in self.path.read_text().split())
        except (OSError, ValueError):
            return None
        return step, length, running


class SlurmExecutor:
    """Trials as one job array; each job runs its share as one batch."""

    def __init__(self, config: SlurmConfig, folder: Path) -> None:
        self.config, self.folder = config, folder

    def run(self, specs: list[TrialSpec], job: TrialJob, progress: Any = None) -> Iterator[TrialResult]:
        """Submit, then yield each job's results as it finishes; raise UserError naming the
        trials lost with failed or cancelled jobs once the others are in."""
        if not specs:
            return
        try:
            import submitit
        except ImportError:
            raise UserError(
                "execution.executor: 'slurm' needs submitit; install it with pip install 'stabsweep[slurm]'"
            ) from None
        config = self.config
        job = dataclasses.replace(job, device="cuda" if config.gpus_per_task > 0 else "cpu")
        parts = math.ceil(len(specs) / config.trials_per_task) if config.trials_per_task else config.array_parallelism
        units = split(specs, parts, job)
        try:
            executor = submitit.AutoExecutor(folder=self.folder, cluster=config.cluster)
        except RuntimeError as exc:  # submitit's: no srun/sbatch here
            raise UserError(
                f"execution.slurm.cluster: slurm, but this machine has no SLURM ({exc}); run from a SLURM login "
                "node, or set execution.slurm.cluster to local (a process per job here) to try the set-up"
            ) from None
        executor.update_parameters(**self.parameters())
        count = len(units)
        files = self._step_files(count) if progress is not None else [None] * count
        jobs = executor.map_array(run_job, units, [job] * count, files, [config.cpus_per_task] * count)
        pending = dict(zip(jobs, units, strict=True))
        steps = dict(zip(jobs, files, strict=True))
        lost: list[tuple[str, list[TrialSpec], BaseException]] = []
        last_read = -math.inf
        try:
            while pending:
                # the step files are read as often as they are written, not at every poll: at a
                # thousand jobs that is a thousand small reads of shared storage each time
                now = time.monotonic()
                read = now - last_read >= PROGRESS_EVERY_S
                if read:
                    last_read = now
                for submitted in list(pending):
                    try:  # the debug cluster runs the job inside done(): its error may surface there
                        if not submitted.done():
                            if read:
                                _report(steps[submitted], progress, str(submitted.job_id))
                            continue
                        results = submitted.result()
                    except Exception as exc:  # noqa: BLE001 - a failed, timed-out or cancelled job: its trials are lost
                        lost.append((str(submitted.job_id), pending.pop(submitted), exc))
                        _report(steps[submitted], progress, str(submitted.job_id), finished=True)
                        continue
                    pending.pop(submitted)
                    _report(steps[submitted], progress, str(submitted.job_id), finished=True)
                    yield from results
                if pending:
                    time.sleep(POLL_S)
        finally:
            for submitted in pending:  # interrupted: do not leave the array running
                submitted.cancel(check=False)
            if files and files[0] is not None:
                shutil.rmtree(files[0].path.parent, ignore_errors=True)
        if lost:
            trials = sorted(spec.trial_id for _, unit, _ in lost for spec in unit)
            first = lost[0]
            raise UserError(
                f"{len(trials)} trial{'s' * (len(trials) > 1)} ({', '.join(map(str, trials[:10]))}"
                f"{', …' * (len(trials) > 10)}) lost with {len(lost)} SLURM job{'s' * (len(lost) > 1)} that did not "
                f"finish (job {first[0]}: {type(first[2]).__name__}: {str(first[2]).splitlines()[0][:200]}); the "
                f"finished trials are saved: rerun with --resume to run only the lost ones (logs in {self.folder})"
            )

    def _step_files(self, count: int) -> list[StepFile]:
        """A folder of its own for this submission's step files (two commands of one run
        folder, or a rerun after a cancelled array, never read each other's)."""
        folder = (self.folder / "progress" / uuid.uuid4().hex[:12]).absolute()
        folder.mkdir(parents=True, exist_ok=True)
        return [StepFile(folder / f"unit{i}.txt", every_s=PROGRESS_EVERY_S) for i in range(count)]

    def parameters(self) -> dict[str, Any]:
        """submitit's parameters: the generic ones, and SLURM's own for the slurm cluster."""
        config = self.config
        params: dict[str, Any] = {
            "timeout_min": config.time_min,
            "cpus_per_task": config.cpus_per_task,
            "slurm_array_parallelism": config.array_parallelism,
        }
        if config.gpus_per_task:
            params["gpus_per_node"] = config.gpus_per_task
        if config.cluster == "slurm":
            if config.partition:
                params["slurm_partition"] = config.partition
            if config.additional:
                params["slurm_additional_parameters"] = dict(config.additional)
        return params


def run_job(specs: list[TrialSpec], job: TrialJob, progress: StepFile | None, threads: int) -> list[TrialResult]:
    """One job of the array: its unit, with torch's threads set to the CPUs the job asked for
    (torch would otherwise start a thread per core of the node, and jobs sharing a node would
    fight over them); restored after, for the debug cluster's jobs that run in this process."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run_unit(specs, job, progress)
    finally:
        torch.set_num_threads(before)


def _report(file: StepFile | None, progress: Any, job_id: str, finished: bool = False) -> None:
    """Hand a running job's last written step to ``progress``; a finished job runs nothing."""
    if file is None:
        return
    last = file.read()
    if last is not None:
        step, length, running = last
        progress(length if finished else step, length, 0 if finished else running, job_id)
