"""Live progress of a sweep: what finished, what is running, how far the running batch got.

A vectorized batch's trials finish together, so a count of finished trials alone would sit at
0/8 for as long as the batch runs. The engine therefore also reports its step: it calls
:meth:`SweepProgress.on_step` with plain numbers it already holds on the host (the step, the
batch's length, how many trials are still running), at most a few times a second, so progress
costs one clock read per step and no device sync.

On a terminal a rich live display redraws from those numbers; elsewhere (a CI log, a pipe,
``tee``) nothing is redrawn: one plain line per finished trial, and a progress line every 10%
of a batch or every 30 seconds.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from stabsweep.records import TrialStatus
from stabsweep.report.console import STATUS_STYLE

if TYPE_CHECKING:
    from stabsweep.records import TrialResult

PLAIN_EVERY_S = 30.0  # a plain progress line at least this often...
PLAIN_EVERY_FRACTION = 0.1  # ...or each time the running batch gets this much further


def describe(result: TrialResult) -> str:
    """One finished trial in a line: its setting, its status and what it reached."""
    spec = result.spec
    ramp = spec.columns.get("phase") == "range_test"  # its rate grows every step: spec.lr is only the last
    setting = f"range test up to lr={spec.lr:.3g}" if ramp else f"lr={spec.lr:.3g}"
    for key, name in (("warmup_steps", "warmup"), ("clip_threshold", "clip"), ("mitigation", "")):
        value = spec.columns.get(key)
        if value is not None and value != "none":
            setting += f" {name}={value:.3g}" if isinstance(value, float) else f" {name + '=' if name else ''}{value}"
    setting += f" seed {spec.seed}"
    outcome = result.status.value.replace("_", " ")
    if result.status is TrialStatus.DIVERGED:
        outcome += f" at step {result.diverged_step}"
        if result.steps is not None and result.diverged_step and len(result.steps.lr) >= result.diverged_step:
            there = float(result.steps.lr[result.diverged_step - 1])
            if not math.isclose(there, spec.lr, rel_tol=0.01):  # a ramp, a warmup, a decaying schedule
                outcome += f" (lr {there:.3g} there)"
    elif result.status is TrialStatus.FAILED:
        outcome += f" ({result.reason})"
    best = "" if result.best_eval_loss is None else f", best eval {result.best_eval_loss:.4g}"
    return f"{setting}: {outcome}{best}"


class SweepProgress:
    """Progress of one ``run_trials`` call: ``total`` trials, ``done`` of them finished already."""

    def __init__(self, console: Console, label: str, total: int, done: int = 0) -> None:
        self.console, self.label, self.total = console, label, total
        self.finished, self.resumed, self.diverged = done, done, 0
        self.workers: dict[int, tuple[int, int, int]] = {}  # worker -> (step, length, running)
        self.since: dict[int, tuple[float, int]] = {}  # worker -> (time, step) when its batch was first seen
        self.start = time.monotonic()
        self.live = console.is_terminal and not console.quiet
        self.last_plain, self.last_fraction = self.start, 0.0
        self.progress: Progress | None = None
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[state]}"),
                console=console,
                transient=True,
                refresh_per_second=4,
            )
            self.task = self.progress.add_task(label, total=total, completed=done, state=self._state())

    def __enter__(self) -> SweepProgress:
        if self.progress is not None:
            self.progress.start()
        elif not self.console.quiet:
            resumed = f", {self.finished} finished before" if self.finished else ""
            trials = f"{self.total} trial{'s' * (self.total != 1)}"
            self.console.print(f"{self.label}: {trials}{resumed}", markup=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def on_step(self, step: int, length: int, running: int, worker: int = 0) -> None:
        """The engine's report: its running batch is at ``step`` of ``length`` with ``running`` trials."""
        previous = self.workers.get(worker)
        if previous is None or step < previous[0] or length != previous[1]:  # a new batch
            self.since[worker] = (time.monotonic(), step)
        self.workers[worker] = (step, length, running)
        if self.progress is not None:
            self.progress.update(self.task, state=self._state())
            return
        fraction = step / max(length, 1)
        now = time.monotonic()
        if now - self.last_plain >= PLAIN_EVERY_S or fraction - self.last_fraction >= PLAIN_EVERY_FRACTION:
            self.last_plain, self.last_fraction = now, fraction
            self.console.print(f"{self.label}: {self._state()}", markup=False, soft_wrap=True)

    def advance(self, result: TrialResult) -> None:
        """A trial finished: count it and print its line."""
        self.finished += 1
        self.diverged += result.status is TrialStatus.DIVERGED
        style = STATUS_STYLE[result.status]
        line = describe(result)
        if self.progress is not None:
            self.progress.console.print(f"  [{style}]●[/] {line}", highlight=False)
            self.progress.update(self.task, completed=self.finished, state=self._state())
        else:
            self.console.print(f"  {line}", markup=False, soft_wrap=True)
        if not self.workers or all(running <= 1 for _, _, running in self.workers.values()):
            self.last_fraction = 0.0  # the next batch starts counting its tenths afresh

    def _state(self) -> str:
        running = sum(r for _, _, r in self.workers.values())
        parts = [f"{self.finished}/{self.total} finished", f"{running} running", f"{self.diverged} diverged"]
        if self.workers:
            step, length, _ = min(self.workers.values(), key=lambda w: w[0] / max(w[1], 1))
            parts.append(f"batch step {step}/{length}")
        parts.append(f"{_duration(time.monotonic() - self.start)} elapsed")
        eta = self._batch_eta()
        if eta is not None:
            batch_eta, batch_length = eta
            queued = self.total - self.finished - running  # trials not started yet: batches to come
            if queued > 0 and running > 0:
                sweep_eta = batch_eta + batch_length * math.ceil(queued / running)
                parts.append(f"the sweep ends in ~{_duration(sweep_eta)}")
            else:
                parts.append(f"the batch ends in ~{_duration(batch_eta)}")
        return ", ".join(parts)

    def _batch_eta(self) -> tuple[float, float] | None:
        """When the slowest running batch reaches its last step, at its pace so far (a batch that
        drops trials as they finish only speeds up, so this errs long), and how long such a
        batch takes from start to end: the batches still to come (one trial each, when trials
        run one at a time) are counted at that length."""
        etas = []
        for worker, (step, length, _) in self.workers.items():
            since, first = self.since[worker]
            elapsed = time.monotonic() - since
            if step > first and elapsed > 0.5:
                per_step = elapsed / (step - first)
                etas.append((per_step * (length - step), per_step * length))
        return max(etas) if etas else None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
