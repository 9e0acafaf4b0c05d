"""What every procedure needs: the config, where to write, how to run and how to talk."""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stabsweep.engine.executors import LocalExecutor, ProcessExecutor
from stabsweep.errors import RunFailed, StalePlan, UserError
from stabsweep.records import TrialJob, TrialSpec
from stabsweep.results.store import ResultsStore

if TYPE_CHECKING:
    from rich.console import Console

    from stabsweep.config.schema import Config
    from stabsweep.engine.ray_executor import RayExecutor
    from stabsweep.engine.slurm_executor import SlurmExecutor
    from stabsweep.records import TrialResult


def seeds_of(config: Config, count: int) -> list[int]:
    """The seeds of a sweep of ``count`` seeds per setting: seed, seed + 1, ..., seed + count − 1."""
    return [config.seed + k for k in range(count)]


_KEEP = object()  # full_run's default: the config's own clipping


def full_run(
    config: Config,
    trial_id: int,
    lr: float,
    seed: int,
    columns: dict[str, Any],
    *,
    warmup: int = 0,
    clip: Any = _KEEP,
    steps: int | None = None,
    skip: Any = _KEEP,
) -> TrialSpec:
    """A trial that trains the config's own run: its schedule after ``train.warmup_steps`` plus
    ``warmup`` more steps of linear warmup (so ``train.steps`` + both in all), its eval cadence
    and its clipping unless ``clip`` replaces it (None: unclipped). ``steps`` cuts the run short
    (the early check) without changing the schedule it follows."""
    train = config.train
    ramp = train.warmup_steps + warmup
    length = train.steps + ramp
    return TrialSpec(
        trial_id=trial_id,
        lr=lr,
        seed=seed,
        steps=length if steps is None else min(steps, length),
        eval_every=train.eval_every,
        schedule=train.schedule,
        warmup_steps=ramp,
        clip=train.clip if clip is _KEEP else clip,
        columns=columns,
        run_steps=length if steps is not None else None,
        skip=train.skip_spikes if skip is _KEEP else skip,
    )


@dataclass
class RunOptions:
    out: Path | None = None  # the run root; the command's folder is <out>/<command>/
    resume: bool = False
    force: bool = False
    quiet: bool = False


@dataclass
class Context:
    config: Config
    options: RunOptions
    console: Console
    told: set[str] = field(default_factory=set)  # engine notes already printed: say each once
    plot_warnings: list[str] = field(default_factory=list)  # plots that could not be drawn, and why
    within: str | None = None  # the command running this one as a stage (tune): it names the next step itself
    epoch_length: int | None = None  # batches per epoch of train_data, when it has a length (set by job())
    one_at_a_time: str | None = None  # why the model cannot be batched, when that is known before training

    @property
    def run_root(self) -> Path:
        return self.options.out or Path("runs") / self.config.name

    @property
    def executor(self) -> LocalExecutor | ProcessExecutor | RayExecutor | SlurmExecutor:
        execution = self.config.execution
        if execution.executor == "process":
            return ProcessExecutor(execution.workers)
        if execution.executor == "ray":
            from stabsweep.engine.ray_executor import RayExecutor

            return RayExecutor(execution.ray)
        if execution.executor == "slurm":
            from stabsweep.engine.slurm_executor import SlurmExecutor

            return SlurmExecutor(execution.slurm, self.run_root / "slurm")
        return LocalExecutor()

    def job(self) -> TrialJob:
        from stabsweep.training.device import resolve_device
        from stabsweep.workloads.factory import resolve_factory

        execution = self.config.execution
        if self.config.factory_fn is not None and execution.executor != "local":
            raise UserError(
                f"factory={self.config.workload.factory}: a function defined in a notebook, a script run as "
                f"__main__ or inside another function cannot be sent to the workers of executor "
                f"'{execution.executor}' (they import the factory by name); define it in a module and pass it (or "
                "'module:function'), or in a file ('file.py:function'), or use executor='local'"
            )
        try:
            factory = resolve_factory(self.config.workload, self.config.source, self.config.factory_fn)
            workload = factory.check(self.config.seed)
        except UserError as exc:  # name the config file, as every other config error does
            raise UserError(f"{self.config.source}: {exc.message}") from None
        try:
            self.epoch_length = len(workload.train_data) or None
        except TypeError:  # an iterable without a length: batches are named by step only
            self.epoch_length = None
        from stabsweep.training.vmap_support import why_not_vectorizable

        self.one_at_a_time = None
        if execution.engine != "sequential":
            self.one_at_a_time = why_not_vectorizable(workload.model, self.config.train.precision)
        if execution.engine == "vectorized" and self.one_at_a_time:
            raise UserError(
                f"execution.engine: vectorized is impossible here: {self.one_at_a_time}; use auto or sequential"
            )
        device = resolve_device(self.config.device)
        return TrialJob(
            factory,
            self.config.train.optimizer,
            self.config.detect,
            str(device),
            engine=execution.engine,
            max_batch=execution.max_batch,
            log_layers_every=self.config.train.log_layers_every if self.config.train.log_layers else 0,
            precision=self.config.train.precision,
            sharpness_every=self.config.train.log_sharpness_every,
            sharpness_iterations=self.config.curvature.iterations,
        )

    def store(self, command: str) -> ResultsStore:
        return ResultsStore.open(
            self.run_root / command, self.config, resume=self.options.resume, force=self.options.force
        )

    def run_trials(self, specs: list[TrialSpec], job: TrialJob, store: ResultsStore, label: str) -> list[TrialResult]:
        """Run the specs that ``store`` has no result for, writing each as it finishes."""
        from stabsweep.report.progress import SweepProgress

        for spec in specs:  # a resumed plan must be the plan that was interrupted
            differs = store.mismatch(spec)
            if differs:
                raise StalePlan(f"--resume: {differs}; use --force to start over")
        from stabsweep.training.checkpoint import prune

        todo = [s for s in specs if s.trial_id not in store.completed]
        store.epoch_length = self.epoch_length
        checkpoints = str(store.checkpoints.absolute())  # absolute: a remote worker's folder is not ours
        job = dataclasses.replace(
            job, checkpoint_dir=checkpoints, checkpoint_every=self.config.execution.checkpoint_every
        )
        results = []
        if self.one_at_a_time and len(todo) > 1:  # known before training: said before it starts, once
            self.say(f"running trials one at a time: {self.one_at_a_time}")
        with SweepProgress(self.console, label, total=len(specs), done=len(specs) - len(todo)) as progress:
            for result in self.executor.run(todo, job, None if self.options.quiet else progress.on_step):
                if result.spec.trial_id in store.completed:  # a resumed batch retrains it; written already
                    continue
                store.write(result)
                progress.advance(result)
                results.append(result)
                for note in engine_notes(result):
                    self.say(note)
        prune(checkpoints, store.completed)
        return results

    def say(self, note: str) -> None:
        """Print an engine note, once per command."""
        if note not in self.told:
            self.told.add(note)
            self.console.print(note, markup=False)

    def setup(self, **what: Any) -> dict[str, Any]:
        """What makes two runs comparable for the stability gate: the workload, and ``what`` (the
        length, the seeds) of the command."""
        return {"workload": self.config.workload.model_dump(mode="json", exclude_none=True), **what}

    def verdict(self, summary: dict[str, Any], folder: str) -> None:
        """Print a command's verdict, warnings and next command (not when it runs as a stage of another)."""
        from stabsweep.report.console import print_verdict

        next_command = None if self.within else summary["next_command"]
        print_verdict(self.console, summary["verdict"], summary["warnings"], next_command, folder)

    def title(self, command: str, what: str) -> str:
        """A plot's title: the run and the command, then what it shows."""
        return f"{self.config.name} · {command}: {what}"

    def plot(self, draw: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Draw a plot; a plot is a side feature, so one that fails is a warning, never a failed command."""
        try:
            draw(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a plot must never fail a run
            path = next((a for a in args if isinstance(a, Path)), None)
            name = path.name if path else draw.__name__
            self.plot_warnings.append(f"plot {name} not drawn: {type(exc).__name__}: {exc}")

    def spikes(self, store: ResultsStore, trials: Any, steps: Any) -> Any:
        """The spikes of these trials (analysis/spikes.py), written to spikes.csv; the frame."""
        from stabsweep.analysis.spikes import detect, mark_init_outliers
        from stabsweep.results.store import SPIKES

        detect_config = self.config.detect
        own = steps[steps["trial_id"].isin(trials["trial_id"])] if len(steps) else steps
        found = detect(own, trials, detect_config.spike_sigma, detect_config.spike_window)
        found = mark_init_outliers(found, self._init_outliers(found))
        found.to_csv(store.folder / SPIKES, index=False)
        return found

    def _init_outliers(self, spikes: Any) -> dict[int, set[int]]:
        """For each seed with a spike of the optimizer's in epoch 0: the batches of epoch 0 (up to
        the last such spike) whose loss at initialisation is an outlier (training/diagnostics.py's
        scan, doctor's rule). A side feature: a scan that raises leaves the attribution as it was."""
        if not len(spikes):
            return {}
        first_epoch = spikes[(spikes["kind"] == "optimization") & (spikes["epoch"] == 0)]
        if not len(first_epoch):
            return {}
        import torch

        from stabsweep.analysis.doctor import outlier_batches
        from stabsweep.training.diagnostics import scan_batches

        doctor, found = self.config.doctor, {}
        try:
            job = self.job()
        except Exception:  # noqa: BLE001 - the attribution is a side feature: it never fails a command
            return found
        device = torch.device(job.device)
        for seed, part in first_epoch.groupby("seed"):
            try:
                workload = job.factory(int(seed))
                workload.model.to(device)
                scan = scan_batches(workload, device, doctor.scan_seconds, int(part["batch"].max()) + 1)
            except Exception:  # noqa: BLE001 - as above
                continue
            found[int(seed)] = set(outlier_batches(scan.losses, doctor.outlier_factor))
        return found

    def add_spikes(self, summary: dict[str, Any], spikes: Any, trials: Any = None) -> None:
        """spikes in summary.json, and the verdict's sentence naming the data's batches."""
        from stabsweep.analysis.spikes import summary_of

        summary["spikes"] = summary_of(spikes, trials)
        if summary["spikes"]["sentence"]:
            summary["verdict"] += " " + summary["spikes"]["sentence"]

    def sharpness(self, store: ResultsStore, trials: Any, summary: dict[str, Any], command: str) -> None:
        """When sharpness was logged (train.log_sharpness_every): what it says about the trials
        that failed, trained or warmed up, in the summary and the verdict, and its plot."""
        from stabsweep.analysis.curvature import sharpness_findings
        from stabsweep.report import plots
        from stabsweep.results.store import SHARPNESS

        path = store.folder / SHARPNESS
        if not path.is_file():
            return
        frame = store.read(SHARPNESS)
        frame = frame[frame["trial_id"].isin(trials["trial_id"])]
        found = sharpness_findings(frame, trials)
        if found is None:
            return
        summary["sharpness"] = found
        if found["sentence"]:
            summary["verdict"] += " " + found["sentence"]
        first_seed = trials[trials["seed"] == trials["seed"].min()] if "seed" in trials else trials
        # colour by what the trials differ in: the rate, else the warmup (a warmup sweep), else the clip threshold
        label = next(
            (c for c in ("lr", "warmup_steps", "clip_threshold") if c in first_seed and first_seed[c].nunique() > 1),
            "lr",
        )
        self.plot(
            plots.sharpness,
            frame[frame["trial_id"].isin(first_seed["trial_id"])],
            first_seed,
            store.folder / "plots" / "sharpness.png",
            label=label,
            title=self.title(command, "sharpness against each rate's stability threshold"),
        )

    def stop_if_nothing_trained(self, store: ResultsStore, trials: Any, command: str) -> None:
        """When every trial raised: write summary.json with the error, say it, and end with exit 3."""
        from stabsweep.analysis.failures import nothing_trained
        from stabsweep.report.console import print_verdict

        verdict = nothing_trained(trials)
        if verdict is None:
            return
        summary = {
            "command": command,
            "config": self.config.source,
            "nothing_trained": True,
            "verdict": verdict,
            "warnings": [],
            # doctor runs the data, labels and loss checks that name the fault (docs/contract.md)
            "next_command": f"stabsweep doctor {shlex.quote(self.config.source)}",
        }
        store.write_summary(summary)
        print_verdict(self.console, verdict, [], summary["next_command"], str(store.folder))
        raise RunFailed(summary)


def engine_notes(result: TrialResult) -> list[str]:
    """What the engine did differently from the plan for this trial, in a line each."""
    notes = []
    if result.fallback:
        notes.append(f"running trials one at a time: {result.fallback}")
    notes.extend(result.notes)
    if result.looped_ops:
        notes.append(
            f"vmap has no batching rule for {', '.join(result.looped_ops)}: the batch runs "
            f"{'that op' if len(result.looped_ops) == 1 else 'those ops'} trial by trial (same results, less speed-up)"
        )
    return notes
