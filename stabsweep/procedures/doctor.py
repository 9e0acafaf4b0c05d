"""``stabsweep doctor``: rule out bugs before sweeping.

Much "instability" is a bug: logits scaled wrong at init, a wrong hand-written backward, dead
ReLUs, a NaN in the data, labels outside the head's range. The doctor runs the classic
checklist on the config's workload and optimizer, each check on a fresh workload from the
factory so that one cannot disturb the next; a crash inside the user's model fails that
check, with the error, and the others still run. The measurements are in
``training/diagnostics.py``, the pass/warn/fail rules in ``analysis/doctor.py``. Any failed
check ends the command with exit code 3 (for CI).
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from stabsweep.analysis import doctor as rules
from stabsweep.config.schema import ScheduleConfig
from stabsweep.errors import RunFailed, UserError
from stabsweep.procedures.context import Context
from stabsweep.records import TrialSpec, TrialStatus
from stabsweep.report import plots
from stabsweep.training import diagnostics
from stabsweep.training.common import to_device, where_raised
from stabsweep.workloads.base import Workload

COMMAND = "doctor"
# A rate that trains most models of each optimizer family, when neither --lr, nor an lr run,
# nor a range test under the run folder gives one.
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 1e-2}
ADAPTIVE_LR = 1e-3  # rmsprop, adam, adamw, nadam, amsgrad


def rate(ctx: Context, lr: float | None) -> tuple[float, str]:
    """The rate the training checks use, and where it came from."""
    import json

    if lr is not None:
        if lr <= 0:
            raise UserError(f"--lr {lr:g}: expected a positive learning rate")
        return lr, "--lr"
    for folder, key, name in (("lr", "best_lr", "lr* of the lr run"), ("find", "suggested_lr", "the range test")):
        path = ctx.run_root / folder / "summary.json"
        if path.is_file():
            value = json.loads(path.read_text()).get(key)
            if value:
                return float(value), f"{name} ({path})"
    optimizer = ctx.config.train.optimizer.name
    return DEFAULT_LR.get(optimizer, ADAPTIVE_LR), f"the default for {optimizer}"


def run(ctx: Context, lr: float | None = None) -> dict[str, Any]:
    config, doctor = ctx.config, ctx.config.doctor
    job = ctx.job()
    device = torch.device(job.device)
    lr, lr_source = rate(ctx, lr)
    store = ctx.store(COMMAND)
    skip = set(doctor.skip)
    checks: list[rules.Check] = []
    state: dict[str, Any] = {}
    errors: dict[str, str] = {}  # an error's text -> the check that failed with it first
    data_fault: list[str] = []  # the data checks that failed: what later checks raise is their doing

    def check(name: str, measure: Callable[[], rules.Check]) -> None:
        if name in skip:
            return
        started = time.perf_counter()
        try:
            found = measure()
        except Exception as exc:  # noqa: BLE001 - the user's model crashed in this check: it fails, the rest run
            found = _crash(name, exc, errors, data_fault)
        gradients_broken = any(c.name == "finite_gradients" and c.status == rules.FAIL for c in checks)
        if gradients_broken and name in GRADIENT_CHECKS and found.status == rules.FAIL:
            found = rules.not_run(
                name, "finite_gradients failed: the non-finite gradients make it fail", found.measured
            )
        checks.append(found)
        if found.name in DATA_CHECKS and found.status == rules.FAIL and found.name not in errors.values():
            data_fault.append(found.name)  # the data measured as wrong, not a check that crashed
        style = STYLE[found.status]
        took = time.perf_counter() - started
        ctx.console.print(
            f"  [{style}]{found.status:4}[/] {found.name} ({took:.1f} s): {found.measured}", highlight=False
        )

    def fresh() -> Workload:
        workload = job.factory(config.seed)
        workload.model.to(device)
        return workload

    def first_batch(workload: Workload, eval_first: bool = False) -> Any:
        data = workload.eval_data if eval_first and workload.eval_data is not None else workload.train_data
        return to_device(diagnostics.first_batch(data), device)

    def first_steps() -> dict[str, Any]:  # run once, read by several checks
        if "first_steps" not in state:
            state["first_steps"] = _first_steps(ctx, job, device, lr, store)
        return state["first_steps"]

    decay = float(config.train.optimizer.kwargs.get("weight_decay") or 0.0)

    def dominated() -> str | None:
        """Words for the advice when weight decay dominates the update (read from the first steps)."""
        return (
            rules.weight_decay_dominates(state["first_steps"]["ratios"], lr, decay) if "first_steps" in state else None
        )

    def update_ratio() -> rules.Check:
        found = first_steps()
        return rules.update_ratio(
            found["ratios"], lr, config.train.optimizer.name, found["weight_rms"], dominated(), found["broken_by_step"]
        )

    ctx.console.print(f"doctor: checks at lr={lr:g} ({lr_source}), each on a fresh model", markup=False)
    check("data_finite", lambda: _data_finite(fresh()))
    check("labels_in_range", lambda: _labels(fresh(), first_batch, state))
    check("batch_outliers", lambda: _batch_outliers(fresh(), device, doctor))
    check("initial_loss", lambda: _initial_loss(fresh(), first_batch))
    check("finite_gradients", lambda: rules.finite_gradients(first_steps()["non_finite"], doctor.update_steps))
    check("overfit_one_batch", lambda: _overfit(ctx, job, device, fresh, first_batch, lr, state, dominated))
    check("gradient_check", lambda: _gradients(fresh(), first_batch, doctor.gradient_samples))
    check("dead_units", lambda: _dead_units(fresh(), first_batch, state, dominated))
    check("update_ratio", update_ratio)
    check("layer_grad_norms", lambda: rules.layer_grad_norms(first_steps()["grad_norms"]))

    failed = any(c.status == rules.FAIL for c in checks)
    source = shlex.quote(config.source)
    summary = {
        "command": COMMAND,
        "config": config.source,
        "lr": lr,
        "lr_source": lr_source,
        "checks": [c.as_dict() for c in checks],
        "skipped": sorted(skip),
        "verdict": rules.verdict(checks),
        "warnings": [],
        "next_command": f"stabsweep doctor {source} --force  # after fixing" if failed else f"stabsweep lr {source}",
    }
    if "first_steps" in state:
        title = ctx.title(COMMAND, f"the first {doctor.update_steps} steps per layer at lr={lr:g}")
        ctx.plot(plots.layers, state["first_steps"]["log"], store.folder / "plots" / "layers.png", title=title)
    summary["warnings"] += ctx.plot_warnings
    store.write_summary(summary)
    _report(ctx, summary, str(store.folder))
    if failed:
        raise RunFailed(summary)
    return summary


DATA_CHECKS = ("data_finite", "labels_in_range", "batch_outliers")  # what later checks raise is their doing
GRADIENT_CHECKS = ("overfit_one_batch", "gradient_check", "update_ratio", "layer_grad_norms")  # need finite gradients
STYLE = {rules.PASS: "green", rules.WARN: "yellow", rules.FAIL: "red", rules.NOT_RUN: "dim"}


class _TrialRaised(Exception):
    """A training run of a check raised: the error as the trial recorded it, and where."""

    def __init__(self, result: Any) -> None:
        super().__init__(result.error)
        self.error = result.error
        self.where = result.reason.removeprefix("raised ").split(" at ", 1)[-1]


def _crash(name: str, exc: Exception, errors: dict[str, str], data_fault: list[str]) -> rules.Check:
    """A check that raised: it fails with the error, unless a data check already failed (that
    fault makes it raise) or an earlier check failed with the same error: then it is not run
    because of that one, so one fault is one failure."""
    if isinstance(exc, _TrialRaised):
        error, where = exc.error, exc.where
    else:
        error, where = f"{type(exc).__name__}: {exc}", where_raised(exc)
    if data_fault:
        return rules.not_run(name, f"{data_fault[0]} failed: the same data makes it raise", f"it raised {error}")
    if error in errors:
        return rules.not_run(name, f"the same error as {errors[error]}", f"it raised {error}")
    errors[error] = name
    return rules.crashed(name, error, where)


def _data_finite(workload: Workload) -> rules.Check:
    where = diagnostics.first_bad_value(workload.train_data)
    if where is None and workload.eval_data is not None:
        where = diagnostics.first_bad_value(workload.eval_data)
        where = where and f"eval data {where}"
    return rules.data_finite(where)


def _labels(workload: Workload, first_batch: Callable, state: dict) -> rules.Check:
    """Whenever the classes are known (``num_classes``, or the outputs' width for a classifier
    by the shapes), every integer target of the training data against them; a workload with
    its own loss is read too, its targets being a batch's second item or its ``labels``."""
    if workload.loss is not None:
        classes = workload.num_classes
    else:
        classes, state["loss_at_init"] = diagnostics.forward_once(workload, first_batch(workload))
    if classes is None:
        return rules.labels_in_range(None, 0, 0, None)
    ignore = getattr(workload.loss_fn, "ignore_index", None) if workload.loss_fn is not None else -100
    low, high, bad = diagnostics.label_range(workload.train_data, classes, ignore)
    return rules.labels_in_range(classes, low, high, bad)


def _batch_outliers(workload: Workload, device: torch.device, doctor: Any) -> rules.Check:
    found = diagnostics.scan_batches(workload, device, doctor.scan_seconds, doctor.scan_batches)
    return rules.batch_outliers(found.losses, found.total, found.seconds, found.stopped, doctor.outlier_factor)


def _initial_loss(workload: Workload, first_batch: Callable) -> rules.Check:
    _, loss_at_init = diagnostics.forward_once(workload, first_batch(workload))
    outputs = loss_at_init()
    return rules.initial_loss(outputs.loss, outputs.reference, outputs.reference_name, outputs.classes is not None)


def _overfit(
    ctx: Context,
    job: Any,
    device: torch.device,
    fresh: Callable[[], Workload],
    first_batch: Callable,
    lr: float,
    state: dict,
    dominated: Callable[[], str | None],
) -> rules.Check:
    """``overfit_steps`` on one fixed batch; when that fails, once more 100× lower, so the advice
    says whether the rate was the cause."""
    steps = ctx.config.doctor.overfit_steps
    result, fixed, batch = _fit_one_batch(ctx, job, device, fresh(), first_batch, lr, steps)
    state["overfit_model"], state["overfit_workload"], state["overfit_batch"] = fixed.model, fixed, batch
    diverged = result.status is TrialStatus.DIVERGED
    retry = None
    if rules.overfit_share(result.steps.train_loss, diverged) >= 0.5:
        low, _, _ = _fit_one_batch(ctx, job, device, fresh(), first_batch, lr / 100, steps)
        retry = (lr / 100, rules.overfit_share(low.steps.train_loss, low.status is TrialStatus.DIVERGED))
    return rules.overfit_one_batch(result.steps.train_loss, lr, steps, diverged, retry, dominated())


def _fit_one_batch(
    ctx: Context, job: Any, device: torch.device, workload: Workload, first_batch: Callable, lr: float, steps: int
) -> tuple[Any, Workload, Any]:
    from stabsweep.training.sequential import train_trial

    batch = first_batch(workload)
    fixed = dataclasses.replace(workload, train_data=diagnostics.RepeatBatch(batch), eval_data=None)
    spec = TrialSpec(0, lr, ctx.config.seed, steps, steps, ScheduleConfig(), columns={"phase": "overfit_one_batch"})
    result = train_trial(spec, lambda seed: fixed, job.optimizer, job.detect, device)
    if result.status is TrialStatus.FAILED:
        raise _TrialRaised(result)
    return result, fixed, batch


def _gradients(workload: Workload, first_batch: Callable, samples: int) -> rules.Check:
    return rules.gradient_check(diagnostics.gradient_check(workload, first_batch(workload), samples))


def _dead_units(
    workload: Workload, first_batch: Callable, state: dict, dominated: Callable[[], str | None]
) -> rules.Check:
    at_init = diagnostics.dead_units(workload.model, first_batch(workload, eval_first=True), workload)
    after = None
    trained = state.get("overfit_model")
    if trained is not None and all(torch.isfinite(p).all() for p in trained.parameters()):  # not a diverged model
        after = diagnostics.dead_units(trained, state["overfit_batch"], state["overfit_workload"])
    found = rules.dead_units(at_init, after)
    decay = dominated()
    if found.status != rules.PASS and decay:
        found.advice = f"{found.advice}; {decay}"
    return found


def _first_steps(ctx: Context, job: Any, device: torch.device, lr: float, store: Any) -> dict[str, Any]:
    """The first steps of real training at ``lr``, every layer logged: each tensor's median
    update ratio, its weights' root-mean-square before the first step, the weights' gradient
    norms at the first step, and the first step whose loss was finite but some gradient was
    not. Written to the doctor's folder (trials.csv, steps.csv, layers.csv)."""
    from stabsweep.training.sequential import train_trial

    steps = ctx.config.doctor.update_steps
    spec = TrialSpec(1, lr, ctx.config.seed, steps, steps, ctx.config.train.schedule, columns={"phase": "first_steps"})

    def training_only(seed: int) -> Workload:  # what training does, not what evaluation does
        return dataclasses.replace(job.factory(seed), eval_data=None)

    result = train_trial(spec, training_only, job.optimizer, job.detect, device, layers_every=1)
    if result.status is TrialStatus.FAILED:
        raise _TrialRaised(result)
    store.write(result)
    log = result.layers
    # The 1e-3 pace and the first-to-last comparison are about weight matrices (and kernels,
    # embeddings): a bias or a norm's gain starts near zero or one, and its ratio says little.
    params = dict(job.factory(ctx.config.seed).model.named_parameters())
    matrices = [i for i, name in enumerate(log.layers) if params[name].dim() >= 2] or list(range(len(log.layers)))
    ratios = {}
    for i in matrices:
        column = log.update_ratio[:, i]
        if (
            not np.isfinite(log.grad_norm[:, i]).all()
            or not np.isfinite(column[np.isfinite(log.weight_norm[:, i])]).all()
        ):
            ratios[log.layers[i]] = math.nan  # its gradients or weights went NaN: never a pass
        else:
            finite = column[np.isfinite(column)]
            ratios[log.layers[i]] = float(np.median(finite)) if finite.size else math.inf
    # Tensors whose weights and gradients were finite before a step and not after it: the
    # optimizer's own arithmetic broke them (Adam's eps rounding to 0 in float16, say).
    grads_ok = np.isfinite(log.grad_norm) & np.isfinite(log.weight_norm)
    by_step = [log.layers[i] for i in matrices if (grads_ok[:, i] & ~np.isfinite(log.update_ratio[:, i])).any()]
    return {
        "log": log,
        "ratios": ratios,
        "broken_by_step": by_step,
        "weight_rms": {
            log.layers[i]: float(log.weight_norm[0, i]) / math.sqrt(params[log.layers[i]].numel()) for i in matrices
        },
        "grad_norms": {log.layers[i]: float(log.grad_norm[0, i]) for i in matrices},
        "non_finite": _non_finite_gradients(result, log),
    }


def _non_finite_gradients(result: Any, log: Any) -> dict[str, Any] | None:
    """The first logged step whose training loss was finite while some gradient was not."""
    losses = result.steps.train_loss
    for k, step in enumerate(log.steps):
        bad = [log.layers[i] for i in np.flatnonzero(~np.isfinite(log.grad_norm[k]))]
        if bad and step <= len(losses) and math.isfinite(losses[step - 1]):
            return {"step": int(step), "loss": float(losses[step - 1]), "parameters": bad}
    return None


def _report(ctx: Context, summary: dict[str, Any], folder: str) -> None:
    from rich.table import Table

    table = Table(title="doctor", title_justify="left")
    for name in ("check", "status", "measured", "expected", "advice"):
        table.add_column(name, overflow="fold")
    for c in summary["checks"]:
        table.add_row(c["name"], f"[{STYLE[c['status']]}]{c['status']}[/]", c["measured"], c["expected"], c["advice"])
    ctx.console.print(table)
    ctx.verdict(summary, folder)
