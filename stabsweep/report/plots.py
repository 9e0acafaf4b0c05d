"""The plots of docs/contract.md ("Plots"), drawn with matplotlib's non-interactive Agg backend.

Each plot takes the tables the sweep wrote (pandas frames) and marks what the analysis
found, so a plot never disagrees with trials.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stabsweep.records import FEASIBLE, INFEASIBLE, TrialStatus

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

BEST, ABOVE, OTHER = "tab:green", ("tab:orange", "tab:red", "tab:purple"), "0.75"


def _figure(width: float = 7.0, height: float = 4.5) -> tuple[Figure, Axes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    return fig, ax


def _save(fig: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _log_x(ax: Axes, values: pd.Series | np.ndarray) -> None:
    """Log x axis spanning the swept values, even when every point is drawn in axes coordinates."""
    positive = np.asarray(values, dtype=float)
    positive = positive[np.isfinite(positive) & (positive > 0)]
    ax.set_xscale("log")
    if positive.size:
        ax.set_xlim(positive.min() / 1.5, positive.max() * 1.5)


def _infeasible(ax: Axes, xs: pd.Series, label: str | None = None) -> None:
    """Infeasible trials as red crosses along the top edge: their loss is meaningless, their x is not."""
    if len(xs):
        ax.scatter(
            xs,
            np.full(len(xs), 0.97),
            marker="x",
            color="red",
            s=60,
            transform=ax.get_xaxis_transform(),
            label=label,
            zorder=3,
        )


def hyperparameter_axis(
    trials: pd.DataFrame,
    x: str,
    objective: str,
    path: Path,
    *,
    best: float | None = None,
    unstable: float | None = None,
    title: str = "",
    xlabel: str | None = None,
) -> Path:
    """Objective vs a hyperparameter (log axis); infeasible trials as red crosses at the top."""
    fig, ax = _figure()
    feasible = trials[trials["status"].isin(FEASIBLE)].sort_values(x)
    bad = trials[trials["status"].isin(INFEASIBLE)]
    ax.plot(feasible[x], feasible[objective], "-", color="0.6", zorder=1)
    for status, color in ((TrialStatus.OK, "tab:blue"), (TrialStatus.UNSTABLE, "tab:orange")):
        part = feasible[feasible["status"] == status]
        ax.scatter(part[x], part[objective], color=color, label=str(status), zorder=2)
    _infeasible(ax, bad[x], "infeasible (diverged / learned nothing)")
    if best is not None:
        ax.axvline(best, color=BEST, ls="--", label=f"lr* = {best:.3g}")
    if unstable is not None:
        ax.axvline(unstable, color="tab:red", ls=":", label=f"unstable base lr = {unstable:.3g}")
    _log_x(ax, trials[x])
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(objective.replace("_", " "))
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _highlight(trial_ids: list[int], best_id: int | None, above_ids: list[int]) -> dict[int, tuple[str, float]]:
    style = {tid: (OTHER, 0.8) for tid in trial_ids}
    for tid, color in zip(above_ids, ABOVE, strict=False):
        style[tid] = (color, 1.6)
    if best_id is not None:
        style[best_id] = (BEST, 2.0)
    return style


def step_curves(
    steps: pd.DataFrame,
    trials: pd.DataFrame,
    column: str,
    path: Path,
    *,
    best_id: int | None = None,
    above_ids: list[int] | None = None,
    label: str = "lr",
    smooth: int = 1,
    title: str = "",
) -> Path:
    """``column`` vs step for every trial; the best and the next rates up are highlighted."""
    fig, ax = _figure()
    above_ids = above_ids or []
    styles = _highlight(list(trials["trial_id"]), best_id, above_ids)
    order = sorted(styles, key=lambda tid: styles[tid][1])  # highlighted curves drawn last, on top
    labels = trials.set_index("trial_id")[label]
    statuses = trials.set_index("trial_id")["status"].to_dict()
    for tid in order:
        part = steps[steps["trial_id"] == tid]
        if part.empty:
            continue
        values = part[column].to_numpy(dtype=float)
        if smooth > 1:
            import pandas as pd

            values = pd.Series(values).ewm(span=smooth).mean().to_numpy()
        color, width = styles[tid]
        highlighted = color != OTHER
        ax.plot(
            part["step"], values, color=color, lw=width, label=f"{label}={labels[tid]:.3g}" if highlighted else None
        )
        if statuses.get(tid) is TrialStatus.DIVERGED:  # mark where the trial was stopped
            finite = np.flatnonzero(np.isfinite(values))
            if finite.size:
                ax.plot(part["step"].iloc[finite[-1]], values[finite[-1]], "x", color="red", ms=8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(column.replace("_", " ") + (f" (EMA span {smooth})" if smooth > 1 else ""))
    ax.set_title(title + ("  (grey: the others)" if len(styles) > len(above_ids) + 1 else ""))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def early_check(steps: pd.DataFrame, evals: pd.DataFrame, lr: float, path: Path, *, title: str = "") -> Path:
    """The early-instability run: training and eval loss at every one of the first steps."""
    fig, ax = _figure()
    ax.plot(steps["step"], steps["train_loss"], color="tab:blue", lw=1, label="train loss")
    if len(evals):
        ax.plot(evals["step"], evals["eval_loss"], color="tab:orange", lw=1, label="eval loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or f"early check at lr = {lr:g}: loss at every step")
    ax.legend(fontsize=8)
    return _save(fig, path)


def warmup_axis(probes: pd.DataFrame, path: Path, picks: dict[float, int | None], *, title: str = "") -> Path:
    """Best eval loss vs warmup steps, one line per base rate; the no-warmup baseline dashed."""
    fig, ax = _figure()
    objective = "best_eval_loss" if probes["best_eval_loss"].notna().any() else "final_train_loss"
    for (base_lr, part), color in zip(probes.groupby("base_lr"), ("tab:blue", "tab:green", "tab:purple"), strict=False):
        ramps = part[part["warmup_steps"] > 0].sort_values("warmup_steps")
        good = ramps[ramps["status"].isin(FEASIBLE)]
        ax.plot(good["warmup_steps"], good[objective], "o-", color=color, label=f"base lr {base_lr:.3g}")
        bad = ramps[ramps["status"].isin(INFEASIBLE)]
        _infeasible(ax, bad["warmup_steps"])
        baseline = part[part["warmup_steps"] == 0]
        if len(baseline):
            row = baseline.iloc[0]
            if TrialStatus.of(row["status"]).infeasible:
                ax.plot([], [], "x", color="red", label=f"no warmup at {base_lr:.3g}: {row['status']}")
            else:
                ax.axhline(row[objective], color=color, ls="--", lw=1, label=f"no warmup at {base_lr:.3g}")
        if picks.get(float(base_lr)):
            ax.axvline(picks[float(base_lr)], color=color, ls=":", lw=1)
    _log_x(ax, probes.loc[probes["warmup_steps"] > 0, "warmup_steps"])
    ax.set_xlabel("warmup steps (probe: ramp, then 2 × warmup at base lr)")
    ax.set_ylabel(objective.replace("_", " "))
    ax.set_title((title or "warmup sweep") + " (red crosses: infeasible; dotted: the pick)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def base_rate(trials: pd.DataFrame, lr_trials: pd.DataFrame | None, path: Path, *, title: str = "") -> Path:
    """Eval loss vs base learning rate, without warmup (the lr sweep, baselines) and with it."""
    fig, ax = _figure()
    objective = "best_eval_loss"
    if lr_trials is not None:
        sweep = lr_trials[lr_trials.get("phase", "sweep") == "sweep"].sort_values("lr")
        ok = sweep[sweep["status"].isin(FEASIBLE)]
        ax.plot(ok["lr"], ok[objective], "o-", color="0.5", label="lr sweep, no warmup")
        bad = sweep[sweep["status"].isin(INFEASIBLE)]
        _infeasible(ax, bad["lr"], "infeasible")
    baselines = trials[(trials["phase"] == "probe") & (trials["warmup_steps"] == 0)]
    bad = baselines[baselines["status"].isin(INFEASIBLE)]
    _infeasible(ax, bad["base_lr"])
    with_warmup = trials[(trials["warmup_steps"] > 0) & trials["status"].isin(FEASIBLE)]
    probes = with_warmup[with_warmup["phase"] == "probe"]
    if len(probes):
        best = probes.loc[probes.groupby("base_lr")[objective].idxmin()]
        ax.scatter(best["base_lr"], best[objective], color="tab:blue", marker="s", label="best probe with warmup")
    confirm = with_warmup[with_warmup["phase"] == "confirm"]
    if len(confirm):
        ax.scatter(
            confirm["base_lr"],
            confirm[objective],
            color="tab:green",
            marker="*",
            s=160,
            label="full run with warmup",
            zorder=3,
        )
    _log_x(ax, np.concatenate([trials["base_lr"], [] if lr_trials is None else lr_trials["lr"]]))
    ax.set_xlabel("base learning rate")
    ax.set_ylabel("best eval loss")
    ax.set_title(title or "with and without warmup")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def grad_norm_report(
    steps: np.ndarray, norms: np.ndarray, threshold: float, path: Path, *, log: bool, title: str
) -> Path:
    """Unclipped gradient norm vs step, with the threshold drawn; clipped steps in red."""
    fig, ax = _figure()
    ax.plot(steps, norms, color="tab:blue", lw=0.8, label="grad norm (before clipping)")
    over = norms > threshold
    ax.scatter(steps[over], norms[over], color="tab:red", s=6, label=f"would be clipped ({over.mean():.0%})")
    ax.axhline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3g}")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("global gradient norm")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def grad_norm_histogram(norms: np.ndarray, threshold: float, path: Path, *, title: str) -> Path:
    """Histogram of the norms on log-spaced bins, with the threshold drawn."""
    fig, ax = _figure()
    finite = norms[np.isfinite(norms) & (norms > 0)]
    low, high = finite.min(), finite.max()
    bins = np.geomspace(low, high if high > low else low * 1.01, 40)
    ax.hist(finite, bins=bins, color="tab:blue", alpha=0.8)
    ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("global gradient norm (log bins)")
    ax.set_ylabel("steps")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)
