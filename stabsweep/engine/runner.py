"""Which trials run together, and how: as a vectorized batch, or one at a time.

Every executor ends here, in this process, in a worker process or in a Ray task: it hands
over a list of trials and gets each result as soon as it is decided.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from stabsweep.records import TrialJob, TrialResult, TrialSpec, TrialStatus
from stabsweep.training.clipping import clip_kind

if TYPE_CHECKING:
    import torch

    from stabsweep.training.common import Progress

# What vmap raises for a model it cannot batch (torch/_functorch): data-dependent Python
# control flow or .item() ("vmap: It looks like you're ..."), ops with no batching rule and no
# fallback ("Batching rule not implemented for aten::lstm"), dynamic output shapes, in-place
# writes into an unbatched tensor. All are RuntimeErrors; anything else is a bug, not a limit.
_VMAP_CANNOT = re.compile(r"\bvmap\b|[Bb]atching rule|batched tensor|BatchedTensor")


def plan_batches(specs: list[TrialSpec], max_batch: int) -> list[list[TrialSpec]]:
    """Trials that can share one computation: same eval cadence, same kind of clipping rule,
    any seeds (each seed brings its own weights and data: training/seeds.py); at most
    ``max_batch`` of them, in plan order."""
    groups: dict[tuple, list[TrialSpec]] = {}
    for spec in specs:
        groups.setdefault((spec.eval_every, clip_kind(spec.clip)), []).append(spec)
    return [group[i : i + max_batch] for group in groups.values() for i in range(0, len(group), max_batch)]


def vmap_cannot(exc: BaseException) -> bool:
    """Whether ``exc`` is vmap saying it cannot batch this model (so trials run one at a time)."""
    return isinstance(exc, RuntimeError) and bool(_VMAP_CANNOT.search(str(exc)))


def run_trials(specs: list[TrialSpec], job: TrialJob, progress: Progress | None = None) -> Iterator[TrialResult]:
    """Run ``specs``: first the checkpoints that continue some of them, then the rest in batches.
    ``progress`` hears from the running loop a few times a second (training/common.py)."""
    import torch

    from stabsweep.training.checkpoint import claim

    device = torch.device(job.device)
    for state, mine in claim(specs, job.checkpoint_dir, job.engine):
        wanted = {spec.trial_id for spec in mine}
        if state["kind"] == "sequential":
            results = _one_at_a_time(mine, job, device, resume=state, progress=progress)
        else:
            results = _vectorized(state["specs"], job, device, resume=state, progress=progress)
        note = f"resumed {len(mine)} trial{'s' * (len(mine) > 1)} from a checkpoint at step {state['step']}"
        for result in results:
            if result.spec.trial_id in wanted:
                yield dataclasses.replace(result, notes=(*result.notes, note))
        specs = [spec for spec in specs if spec.trial_id not in wanted]
    if job.engine == "sequential":
        yield from _one_at_a_time(specs, job, device, progress=progress)
        return
    for batch in plan_batches(specs, job.max_batch):
        if len(batch) == 1 and job.engine == "auto":  # a batch of one only adds vmap's overhead
            yield from _one_at_a_time(batch, job, device, progress=progress)
        else:
            yield from _vectorized(batch, job, device, progress=progress)


def _one_at_a_time(
    specs: list[TrialSpec],
    job: TrialJob,
    device: torch.device,
    fallback: str | None = None,
    resume: dict | None = None,
    progress: Progress | None = None,
) -> Iterator[TrialResult]:
    from stabsweep.training.sequential import train_trial

    checkpoints = (job.checkpoint_dir, job.checkpoint_every)
    for spec in specs:
        result = train_trial(
            spec,
            job.factory,
            job.optimizer,
            job.detect,
            device,
            checkpoints,
            resume,
            progress,
            job.log_layers_every,
            job.precision,
            (job.sharpness_every, job.sharpness_iterations),
        )
        yield dataclasses.replace(result, fallback=fallback) if fallback else result


def _vectorized(
    batch: list[TrialSpec],
    job: TrialJob,
    device: torch.device,
    resume: dict | None = None,
    progress: Progress | None = None,
) -> Iterator[TrialResult]:
    """Run ``batch`` as one computation. What vmap cannot batch runs the rest one at a time.

    When the user's code raises inside the batch, the error vmap shows may not be theirs (an
    extra trial dimension, a frame inside torch's decompositions): the first unfinished trial
    then runs alone, as it would without stabsweep. If it fails alone at the same step, that is
    the error of every unfinished trial, each keeping the steps it ran in the batch; if it does
    not, the batch met a limit of vmap, and the rest run one at a time, saying so. An error
    raised in stabsweep's own code is a bug: it is raised, not blamed on the trials.
    """
    from stabsweep.training.checkpoint import Checkpointer
    from stabsweep.training.common import failed_result, trial_failure
    from stabsweep.training.vectorized import TrialBatch
    from stabsweep.training.vmap_support import NotVectorizable

    finished: set[int] = set()
    start = time.perf_counter()
    trials = None
    try:
        checkpointer = Checkpointer(job.checkpoint_dir, job.checkpoint_every, batch)
        trials = TrialBatch(
            batch,
            job.factory,
            job.optimizer,
            job.detect,
            device,
            checkpointer,
            job.log_layers_every,
            job.precision,
            (job.sharpness_every, job.sharpness_iterations),
        )
        for result in trials.run(resume, progress):
            finished.add(result.spec.trial_id)
            yield result
        return
    except NotVectorizable as exc:
        reason = str(exc)
    except Exception as exc:
        if not vmap_cannot(exc):
            if not trial_failure(exc):
                raise
            unfinished = [spec for spec in batch if spec.trial_id not in finished]
            records = {spec.trial_id: trials.records(spec) if trials is not None else None for spec in unfinished}
            alone = next(_one_at_a_time(unfinished[:1], job, device, progress=progress))
            failed_step = trials.steps_done if trials is not None else 0
            if alone.status is TrialStatus.FAILED and alone.steps_run == failed_step:
                yield dataclasses.replace(alone, engine="vectorized")
                for spec in unfinished[1:]:
                    result = failed_result(spec, exc, start, device, records[spec.trial_id])
                    yield dataclasses.replace(result, reason=alone.reason, error=alone.error, engine="vectorized")
                return
            first_sentence = str(exc).split(". ")[0].splitlines()[0]
            reason = f"the batch raised {type(exc).__name__} ({first_sentence}), which a trial alone does not"
            yield dataclasses.replace(alone, fallback=reason)
            finished.add(alone.spec.trial_id)
        else:
            first_sentence = str(exc).split(". ")[0].splitlines()[0]
            reason = f"vmap raised {type(exc).__name__}: {first_sentence}"
    unfinished = [s for s in batch if s.trial_id not in finished]
    yield from _one_at_a_time(unfinished, job, device, fallback=reason, progress=progress)
