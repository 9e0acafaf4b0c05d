"""Checkpoints of running trials, so a killed sweep resumes mid-batch with nothing finished lost.

A running batch (or a trial running alone) saves its whole state every
``execution.checkpoint_every`` seconds into ``<run folder>/checkpoints/<run id>/`` (results/store.py's
``checkpoints``: one folder per run, kept by ``--resume``): weights, optimizer
and clipping state, the random states, the data stream's position, the records so far and the
results of its trials that already finished. A save is written to a temporary file and then
renamed over the last one, so a kill during a save leaves the previous checkpoint intact.

``--resume`` hands the unfinished trials to the engine, which first looks here: a checkpoint
whose trials are all among them (compared field by field) continues from where it was saved,
and gives the same results, bit for bit on the CPU, as the run that was killed would have.
A checkpoint is removed when its batch finishes. Saving is a side feature: a save that fails
(a full disk, a folder a remote Ray worker cannot reach) turns checkpoints off for that batch,
with a note, and never fails a trial.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import torch

from stabsweep.records import TrialSpec

SUFFIX = ".ckpt"


def batch_key(specs: list[TrialSpec]) -> str:
    """A name for the checkpoint of these trials, the same in every process that plans them."""
    text = "\n".join(repr(spec) for spec in specs)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class Checkpointer:
    """Saves one batch's state every ``every`` seconds into ``folder``; ``every`` = 0 never saves."""

    def __init__(self, folder: str | None, every: float, specs: list[TrialSpec]) -> None:
        self.path = Path(folder) / f"{batch_key(specs)}{SUFFIX}" if folder and every > 0 else None
        self.every = every
        self.next_save = time.monotonic() + every
        self.note: str | None = None  # why saving stopped, when it did

    def due(self) -> bool:
        """Cheap enough to ask every step: one clock read."""
        return self.path is not None and time.monotonic() >= self.next_save

    def save(self, state: dict[str, Any]) -> None:
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(f".tmp{os.getpid()}")
            torch.save(state, partial)
            os.replace(partial, self.path)
        except OSError as exc:  # a side feature never fails a trial
            self.note = f"checkpoints off for this batch: saving to {self.path.parent} failed ({exc.strerror or exc})"
            self.path = None
            return
        self.next_save = time.monotonic() + self.every

    def discard(self) -> None:
        """Remove the batch's checkpoint, and the partial saves of any process killed while
        saving it (a ``.tmp<pid>`` file each: on a Ray node or SLURM job that died mid-save)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            for partial in self.path.parent.glob(f"{self.path.stem}.tmp*"):
                partial.unlink(missing_ok=True)


def saved(folder: str | None) -> list[tuple[Path, dict[str, Any]]]:
    """The checkpoints in ``folder``, each with its state (unreadable ones are skipped)."""
    if not folder or not Path(folder).is_dir():
        return []
    found = []
    for path in sorted(Path(folder).glob(f"*{SUFFIX}")):
        try:
            found.append((path, torch.load(path, weights_only=False)))
        except Exception:  # noqa: BLE001 - a torn or foreign file is not a checkpoint to resume
            continue
    return found


def claim(specs: list[TrialSpec], folder: str | None, engine: str) -> list[tuple[dict[str, Any], list[TrialSpec]]]:
    """The checkpoints that can continue some of ``specs``, each with the specs it takes over.

    A checkpoint qualifies when some of its trials are among ``specs`` and each of those is
    unchanged, field by field. Its other trials finished after it was saved (their results are
    written already): they train again, for the others' sake, but are not reported twice.
    A ``sequential`` engine takes only checkpoints of trials that ran alone.
    """
    by_id = {spec.trial_id: spec for spec in specs}
    claimed: list[tuple[dict[str, Any], list[TrialSpec]]] = []
    for _, state in saved(folder):
        if engine == "sequential" and state.get("kind") != "sequential":
            continue
        mine = [spec for spec in state["specs"] if spec.trial_id in by_id]
        if mine and all(by_id[spec.trial_id] == spec for spec in mine):
            claimed.append((state, mine))
            for spec in mine:
                del by_id[spec.trial_id]
    return claimed


def prune(folder: str | None, completed: set[int]) -> None:
    """Remove the checkpoints all of whose trials have results: nothing is left to resume."""
    for path, state in saved(folder):
        if all(spec.trial_id in completed for spec in state["specs"]):
            path.unlink(missing_ok=True)
