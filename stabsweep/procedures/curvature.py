"""``stabsweep curvature``: the sharpness at initialisation against the optimizer's threshold.

Measure λ₀, the top eigenvalue of the Hessian of the mean training loss over the first
``curvature.batches`` batches at the initial weights (``training/curvature.py``: Lanczos by
scipy's eigsh over reverse-over-reverse HVPs), for an adaptive optimizer that of P⁻¹H with
P its steady-state preconditioner at those weights, √(mean g²) + ε over the batches; then the
rate it implies, threshold / λ₀ (``analysis/curvature.py``), beside the edge an lr run in the
same folder found, and what the gap means. Cost: a few seconds; printed against the lr
sweep's wall time.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from typing import Any, NoReturn

import torch

from stabsweep.analysis.curvature import compare, stable_sharpness, sweep_edge, threshold
from stabsweep.errors import RunFailed, UserError
from stabsweep.procedures.context import Context
from stabsweep.training.common import DataStream, to_device

COMMAND = "curvature"


def run(ctx: Context, lr: float | None = None) -> dict[str, Any]:
    import scipy.sparse.linalg  # noqa: F401 - imported before the probe's clock starts, as torch is
    import threadpoolctl  # noqa: F401

    from stabsweep.training.common import trial_failure, where_raised

    config = ctx.config
    if lr is not None and lr <= 0:
        raise UserError(f"--lr {lr:g}: expected a positive learning rate")
    job = ctx.job()
    store = ctx.store(COMMAND)
    bound = threshold(config.train.optimizer.name, config.train.optimizer.kwargs)
    started = time.perf_counter()
    try:
        eigen, why = _probe(ctx, job, bound)
    except torch.OutOfMemoryError:
        source = shlex.quote(config.source)
        _cannot(
            ctx,
            store,
            f"memory ran out during the probe (it keeps the gradient's graph over the {config.curvature.batches} "
            "batches of curvature.batches while it runs, about two training steps' activations each)",
            f"stabsweep curvature {source} --set curvature.batches=1",
        )
    except Exception as exc:
        if not trial_failure(exc):  # a bug of stabsweep's: exit 1 with its traceback
            raise
        _cannot(ctx, store, f"your code raised {type(exc).__name__} at {where_raised(exc)}: {exc}")
    if why:
        _cannot(ctx, store, why)
    if math.isnan(eigen.value):
        _cannot(
            ctx,
            store,
            f"the Hessian-vector products were not finite after {eigen.matvecs} (NaN or inf): the loss or its "
            "gradient is not finite at the initial weights, or overflows in the model's precision",
        )
    seconds = time.perf_counter() - started
    summary = _summary(ctx, eigen, bound, lr, seconds)
    store.write_summary(summary)
    _report(ctx, summary, str(store.folder))
    return summary


def _probe(ctx: Context, job: Any, bound: Any) -> tuple[Any, str | None]:
    """λ₀ (an :class:`Eigen`) at the initial weights, and why it cannot be measured when it
    cannot (the gradient is not finite, the preconditioner has zero entries, or the gradient
    carries no graph to differentiate again), else None."""
    from stabsweep.training.curvature import ModelHessian, adam_preconditioner, lanczos_top, preconditioner_eps

    config, probe = ctx.config, ctx.config.curvature
    device = torch.device(job.device)
    workload = job.factory(config.seed)
    workload.model.to(device)
    stream = DataStream(workload.train_data, device)
    batches = [to_device(next(stream), device) for _ in range(probe.batches)]
    hessian = ModelHessian(workload, batches, seed=config.seed)
    if bound is not None and bound.preconditioned:
        squares = torch.stack([ModelHessian(workload, [b], seed=config.seed).gradient().square() for b in batches])
        if not torch.isfinite(squares).all():  # NaN or inf gradients: no preconditioner, no curvature
            return None, (
                f"the loss's gradient is not finite at the initial weights (NaN or inf in "
                f"{int((~torch.isfinite(squares)).any(0).sum()):,} of {hessian.dim:,} weights' gradients), so "
                "neither the optimizer's preconditioner nor the curvature is defined there"
            )
        name, kwargs = config.train.optimizer.name, config.train.optimizer.kwargs
        state = {"exp_avg_sq": squares.mean(0), "square_avg": squares.mean(0), "sum": squares.mean(0), "step": 10**9}
        preconditioner = adam_preconditioner(squares.mean(0), name, kwargs, state)
        zeros, scale = int((preconditioner == 0).sum()), preconditioner.rsqrt()
        if zeros:  # P^-½ of a zero entry: the optimizer divides 0 by 0 there
            eps = preconditioner_eps(name, kwargs)
            rounded, dtype = torch.tensor(eps, dtype=scale.dtype).item(), str(scale.dtype).removeprefix("torch.")
            return None, (
                f"the optimizer's preconditioner P = √v + ε is 0 on {zeros:,} of {hessian.dim:,} weights (their "
                f"squared gradients are 0, and ε = {eps:g} is {rounded:g} in {dtype}): "
                f"{bound.family}'s first update divides 0 by 0 there, so its preconditioned sharpness is unbounded; "
                "raise train.optimizer.eps or train in a wider precision"
            )
        hessian.scale = scale
    ctx.console.print(
        f"curvature: the top Hessian eigenvalue at initialisation, {hessian.dim:,} weights, "
        f"{probe.batches} batch{'es' * (probe.batches > 1)}",
        markup=False,
    )
    eigen = lanczos_top(hessian, hessian.dim, like=hessian.flat, tol=probe.tol, max_matvecs=probe.max_matvecs)
    if not hessian.differentiable_twice:
        return eigen, (
            "the loss's gradient carries no graph to differentiate again: its backward is cut (a custom "
            "autograd.Function marked @once_differentiable, a .detach() or torch.no_grad() inside the loss), or the "
            "loss is linear in every weight (curvature 0)"
        )
    return eigen, None


def _cannot(ctx: Context, store: Any, why: str, next_command: str | None = None) -> NoReturn:
    """The probe could not measure λ₀: summary.json says why, doctor is next (or
    ``next_command``), exit 3; ``--quiet`` still prints the verdict (report/console.py)."""
    summary = {
        "command": COMMAND,
        "config": ctx.config.source,
        "sharpness": None,
        "nothing_measured": True,
        "verdict": f"No sharpness measured: {why.rstrip('.')}.",
        "warnings": [],
        # doctor's loss, gradient and precision checks name the fault (docs/contract.md)
        "next_command": next_command or f"stabsweep doctor {shlex.quote(ctx.config.source)}",
    }
    store.write_summary(summary)
    ctx.verdict(summary, str(store.folder))
    raise RunFailed(summary)


def _lr_run(ctx: Context) -> dict[str, Any] | None:
    """The lr run in the same folder: its summary.json, with ``sweep_edge`` (its
    :class:`SweepEdge`), ``wall_seconds`` and ``trained_sharpness`` (when it logged sharpness)
    added."""
    path = ctx.run_root / "lr" / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    summary["sweep_edge"] = sweep_edge(summary)
    trials = ctx.run_root / "lr" / "trials.csv"
    if trials.is_file():
        from stabsweep.results.store import read_table

        table = read_table(trials)
        summary["wall_seconds"] = float(table["wall_seconds"].max())  # a batch's trials end with it
        logged = ctx.run_root / "lr" / "sharpness.csv"
        if logged.is_file():  # the sharpness training grew to (progressive sharpening)
            summary["trained_sharpness"] = stable_sharpness(read_table(logged), table)
    return summary


def _summary(ctx: Context, eigen: Any, bound: Any, lr: float | None, seconds: float) -> dict[str, Any]:
    config, probe = ctx.config, ctx.config.curvature
    converged = eigen.converged(probe.tol)
    predicted = bound.edge(eigen.value) if bound is not None and eigen.value == eigen.value else None
    lr_run = _lr_run(ctx)
    what = "preconditioned sharpness (of P⁻¹H)" if bound is not None and bound.preconditioned else "sharpness"
    words = f"{what} {eigen.value:.4g} at initialisation"
    if not converged:
        words += f" (not converged: residual {eigen.residual:.2g} after {eigen.matvecs} products; a lower bound)"
    warnings = []
    if bound is None:
        verdict = f"{words}; {config.train.optimizer.name} has no known stability threshold to compare it with."
    elif predicted is None:
        verdict = f"{words}: not positive, so {bound.family} has no bound on the rate at the start of training."
    else:
        verdict = (
            f"{words}: {bound.family} is stable while the sharpness stays below {bound.formula}, so at the start of "
            f"training for rates below {bound.constant:.4g}/λ₀ = {predicted:.3g} (gradient descent on a quadratic of "
            "this curvature diverges above it)."
        )
        start = _start_factor(config)
        if 0 < start < 1:  # a warmup (or one-cycle) schedule: its trials start below their base rate
            verdict += (
                f" This config's schedule starts at {start:.2g}× the base rate, so base rates up to "
                f"{predicted / start:.3g} start below that edge."
            )
        trained = lr_run.get("trained_sharpness") if lr_run is not None else None
        if lr_run is not None:
            growth = trained / eigen.value if trained else None
            verdict += " Against the lr sweep: " + compare(predicted, lr_run["sweep_edge"], growth, start) + "."
        if trained:
            edge, unstable = bound.constant / trained, lr_run.get("unstable_base_lr")
            verdict += (
                f" The lr run's trials that trained reached sharpness {trained:.4g} while below their own threshold "
                f"(logged): at that curvature the edge is {edge:.3g}"
                + (f"; the sweep's unstable rate is {unstable / edge:.2g}× that" if unstable else "")
                + "."
            )
        if lr is not None:  # where X sits: against the start's edge, the sweep's, and the grown curvature's
            ratio, unstable = lr / predicted, lr_run.get("unstable_base_lr") if lr_run is not None else None
            side = "above" if ratio > 1 else "below"
            verdict += f" At --lr {lr:g}: {ratio:.2g}× the predicted edge ({side} it at the start)"
            if unstable:
                verdict += f"; {'at or above' if lr >= unstable else 'below'} the sweep's unstable rate {unstable:.3g}"
            if trained:
                verdict += f"; {lr * trained / bound.constant:.2g}× the edge at the sharpness training grew to"
            verdict += "."
    cost = f"{seconds:.1f} s"
    if lr_run is not None and lr_run.get("wall_seconds"):
        share = seconds / lr_run["wall_seconds"]
        cost += f", {share:.1%} of the lr sweep's {lr_run['wall_seconds']:.0f} s"
    if not converged:
        warnings.append(f"the eigensolver did not reach tol {probe.tol:g}: raise curvature.max_matvecs")
    found = lr_run["sweep_edge"] if lr_run else None
    return {
        "command": COMMAND,
        "config": config.source,
        "sharpness": eigen.value,
        "preconditioned": bool(bound is not None and bound.preconditioned),
        "residual": eigen.residual,
        "converged": converged,
        "matvecs": eigen.matvecs,
        "method": eigen.method,
        "batches": probe.batches,
        "optimizer": bound.family if bound is not None else config.train.optimizer.name,
        "threshold_formula": bound.formula if bound is not None else None,
        "threshold_constant": bound.constant if bound is not None else None,
        "predicted_edge": predicted,
        "unstable_base_lr": lr_run.get("unstable_base_lr") if lr_run else None,
        "best_lr": lr_run.get("best_lr") if lr_run else None,
        "trained_sharpness": lr_run.get("trained_sharpness") if lr_run else None,
        "trained_edge": (bound.constant / lr_run["trained_sharpness"])
        if lr_run and bound is not None and lr_run.get("trained_sharpness")
        else None,
        "edge_ratio": (lr_run["unstable_base_lr"] / predicted)
        if lr_run and predicted and lr_run.get("unstable_base_lr")
        else None,
        "unstable_status": str(found.status) if found and found.status else None,
        "diverged_lr": found.diverged if found else None,
        "diverged_ratio": found.diverged / predicted if found and found.diverged and predicted else None,
        "sharpening": lr_run["trained_sharpness"] / eigen.value
        if lr_run and lr_run.get("trained_sharpness") and eigen.value > 0
        else None,
        "lr": lr,
        "seconds": seconds,
        "cost": cost,
        "verdict": verdict,
        "warnings": warnings,
        "rules": {
            "sharpness": "the largest eigenvalue of the Hessian of the mean training loss over the first "
            "curvature.batches batches, at the initial weights (train mode, fixed dropout masks)",
            "preconditioned": "for adam, adamw, amsgrad, rmsprop, adagrad: of P^-1/2 H P^-1/2 (the spectrum of P⁻¹H), "
            "P = √v + ε with v the mean squared gradient over the batches (Adam's steady state: 1 − β₁ᵗ → 1)",
            "predicted_edge": "threshold_constant / sharpness: the highest stable rate on a quadratic that curved",
            "agreement": "edge_ratio within 1/1.5 to 1.5",
            "diverged_lr": "the lowest rate above the lr run's best_lr where a trial diverged: the threshold bounds "
            "divergence, so a first failure that learned nothing is told apart (unstable_status)",
            "sharpening": "trained_sharpness / sharpness: how far training sharpened (progressive sharpening is "
            "claimed only where it was logged)",
            "trained_edge": "threshold_constant / the highest sharpness an ok trial of the lr run reached while below "
            "its own threshold (when it logged sharpness): the edge at the curvature training grew to",
        },
        "next_command": _next(ctx, lr_run),
    }


def _start_factor(config: Any) -> float:
    """The rate of a trial's first update over its base rate, from the config's schedule and
    ``train.warmup_steps`` (1 for a constant rate; 1/w for a linear warmup of w steps)."""
    from stabsweep.optim.schedules import lr_table

    schedule, warmup = config.train.schedule, config.train.warmup_steps
    return float(lr_table(schedule.name, schedule.kwargs, 1.0, config.train.steps, prepend_warmup=warmup)[0])


def _next(ctx: Context, lr_run: dict[str, Any] | None) -> str:
    """An lr run that logs sharpness when there is none to compare with (or it logged none);
    with one that did, or one that sends the user to ``doctor`` (nothing trained, or a failure
    the rate does not explain), the lr run's own next step leads on."""
    source, root = shlex.quote(ctx.config.source), shlex.quote(str(ctx.run_root))
    logging = f"stabsweep lr {source} --set train.log_sharpness_every=25 --out {root}"
    if lr_run is None:
        return logging
    if lr_run.get("next_command", "").startswith("stabsweep doctor"):  # nothing trained, or not the rate's doing
        return lr_run["next_command"]
    if "trained_sharpness" not in lr_run:  # it wrote no sharpness.csv
        return logging + " --force"
    return lr_run.get("next_command") or f"stabsweep report {root}"


def _report(ctx: Context, summary: dict[str, Any], folder: str) -> None:
    from rich.table import Table

    table = Table(title="curvature at initialisation", title_justify="left")
    for name in ("sharpness", "residual", "products", "threshold", "predicted edge", "sweep's unstable lr", "ratio"):
        table.add_column(name, justify="right")

    def fmt(value: Any, spec: str = ".4g") -> str:
        return "–" if value is None else format(value, spec)

    table.add_row(
        fmt(summary["sharpness"]),
        fmt(summary["residual"], ".2g"),
        str(summary["matvecs"]),
        summary["threshold_formula"] or "–",
        fmt(summary["predicted_edge"], ".3g"),
        fmt(summary["unstable_base_lr"], ".3g"),
        fmt(summary["edge_ratio"], ".2g"),
    )
    ctx.console.print(table)
    ctx.console.print(f"Cost: {summary['cost']} ({summary['method']})", markup=False)
    ctx.verdict(summary, folder)
