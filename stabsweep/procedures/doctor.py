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
import shlex
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
    config = ctx.config
    job = ctx.job()
    device = torch.device(job.device)
    lr, lr_source = rate(ctx, lr)
    store = ctx.store(COMMAND)
    skip = set(config.doctor.skip)
    checks: list[rules.Check] = []
    state: dict[str, Any] = {}

    def check(name: str, measure: Callable[[], rules.Check | list[rules.Check]]) -> None:
        if name in skip:
            return
        try:
            found = measure()
        except Exception as exc:  # noqa: BLE001 - the user's model crashed in this check: it fails, the rest run
            found = rules.crashed(name, exc, where_raised(exc))
        for item in found if isinstance(found, list) else [found]:
            checks.append(item)
            style = {"pass": "green", "warn": "yellow", "fail": "red"}[item.status]
            ctx.console.print(f"  [{style}]{item.status:4}[/] {item.name}: {item.measured}", highlight=False)

    def fresh() -> Workload:
        workload = job.factory(config.seed)
        workload.model.to(device)
        return workload

    def first_batch(workload: Workload, eval_first: bool = False) -> Any:
        data = workload.eval_data if eval_first and workload.eval_data is not None else workload.train_data
        return to_device(diagnostics.first_batch(data), device)

    ctx.console.print(f"doctor: checks at lr={lr:g} ({lr_source})", markup=False)
    check("data_finite", lambda: _data_finite(fresh()))
    check("labels_in_range", lambda: _labels(fresh(), first_batch, state))
    check("initial_loss", lambda: _initial_loss(fresh(), first_batch))
    check("overfit_one_batch", lambda: _overfit(ctx, job, device, fresh(), first_batch, lr, state))
    check("gradient_check", lambda: _gradients(fresh(), first_batch, config.doctor.gradient_samples))
    check("dead_units", lambda: _dead_units(fresh(), first_batch, state))

    def first_steps() -> dict[str, Any]:  # run once, read by two checks
        if "first_steps" not in state:
            state["first_steps"] = _first_steps(ctx, job, device, lr, store)
        return state["first_steps"]

    check("update_ratio", lambda: rules.update_ratio(first_steps()["ratios"], lr))
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
        title = ctx.title(COMMAND, f"the first {config.doctor.update_steps} steps per layer at lr={lr:g}")
        ctx.plot(plots.layers, state["first_steps"]["log"], store.folder / "plots" / "layers.png", title=title)
    summary["warnings"] += ctx.plot_warnings
    store.write_summary(summary)
    _report(ctx, summary, str(store.folder))
    if failed:
        raise RunFailed(summary)
    return summary


def _data_finite(workload: Workload) -> rules.Check:
    where = diagnostics.first_bad_value(workload.train_data)
    if where is None and workload.eval_data is not None:
        where = diagnostics.first_bad_value(workload.eval_data)
        where = where and f"eval data {where}"
    return rules.data_finite(where)


def _labels(workload: Workload, first_batch: Callable, state: dict) -> rules.Check:
    classes, state["loss_at_init"] = diagnostics.forward_once(workload, first_batch(workload))
    if classes is None or workload.loss is not None:
        return rules.labels_in_range(None, 0, 0, None)
    ignore = getattr(workload.loss_fn, "ignore_index", None)
    low, high, bad = diagnostics.label_range(workload.train_data, classes, ignore)
    return rules.labels_in_range(classes, low, high, bad)


def _initial_loss(workload: Workload, first_batch: Callable) -> rules.Check:
    _, loss_at_init = diagnostics.forward_once(workload, first_batch(workload))
    outputs = loss_at_init()
    return rules.initial_loss(outputs.loss, outputs.reference, outputs.reference_name, outputs.classes is not None)


def _overfit(
    ctx: Context, job: Any, device: torch.device, workload: Workload, first_batch: Callable, lr: float, state: dict
) -> rules.Check:
    from stabsweep.training.sequential import train_trial

    steps = ctx.config.doctor.overfit_steps
    batch = first_batch(workload)
    fixed = dataclasses.replace(workload, train_data=diagnostics.RepeatBatch(batch), eval_data=None)
    spec = TrialSpec(0, lr, ctx.config.seed, steps, steps, ScheduleConfig(), columns={"phase": "overfit_one_batch"})
    result = train_trial(spec, lambda seed: fixed, job.optimizer, job.detect, device)
    if result.status is TrialStatus.FAILED:
        raise RuntimeError(result.error)
    state["overfit_model"], state["overfit_workload"], state["overfit_batch"] = fixed.model, fixed, batch
    return rules.overfit_one_batch(result.steps.train_loss, lr, steps, result.status is TrialStatus.DIVERGED)


def _gradients(workload: Workload, first_batch: Callable, samples: int) -> rules.Check:
    return rules.gradient_check(diagnostics.gradient_check(workload, first_batch(workload), samples))


def _dead_units(workload: Workload, first_batch: Callable, state: dict) -> rules.Check:
    at_init = diagnostics.dead_units(workload.model, first_batch(workload, eval_first=True), workload)
    after = None
    if "overfit_model" in state:
        after = diagnostics.dead_units(state["overfit_model"], state["overfit_batch"], state["overfit_workload"])
    return rules.dead_units(at_init, after)


def _first_steps(ctx: Context, job: Any, device: torch.device, lr: float, store: Any) -> dict[str, Any]:
    """The first steps of real training at ``lr``, every layer logged: each tensor's median
    update ratio and the weights' gradient norms at the first step. Written to the doctor's
    folder (trials.csv, steps.csv, layers.csv)."""
    from stabsweep.training.sequential import train_trial

    steps = ctx.config.doctor.update_steps
    spec = TrialSpec(1, lr, ctx.config.seed, steps, steps, ctx.config.train.schedule, columns={"phase": "first_steps"})
    result = train_trial(spec, job.factory, job.optimizer, job.detect, device, layers_every=1)
    if result.status is TrialStatus.FAILED:
        raise RuntimeError(f"{result.error} ({result.reason})")
    store.write(result)
    log = result.layers
    # The 1e-3 pace and the first-to-last comparison are about weight matrices (and kernels,
    # embeddings): a bias or a norm's gain starts near zero or one, and its ratio says little.
    dims = {name: p.dim() for name, p in job.factory(ctx.config.seed).model.named_parameters()}
    matrices = [i for i, name in enumerate(log.layers) if dims.get(name, 2) >= 2] or list(range(len(log.layers)))
    ratios = np.nanmedian(log.update_ratio, axis=0)
    return {
        "log": log,
        "ratios": {log.layers[i]: float(ratios[i]) for i in matrices},
        "grad_norms": {log.layers[i]: float(log.grad_norm[0, i]) for i in matrices},
    }


def _report(ctx: Context, summary: dict[str, Any], folder: str) -> None:
    from rich.table import Table

    table = Table(title="doctor", title_justify="left")
    for name in ("check", "status", "measured", "expected", "advice"):
        table.add_column(name, overflow="fold")
    style = {"pass": "green", "warn": "yellow", "fail": "red"}
    for c in summary["checks"]:
        table.add_row(c["name"], f"[{style[c['status']]}]{c['status']}[/]", c["measured"], c["expected"], c["advice"])
    ctx.console.print(table)
    ctx.verdict(summary, folder)
