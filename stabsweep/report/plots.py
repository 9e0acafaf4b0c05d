"""Plots along the steps of training: loss and gradient-norm curves, the early check, norm histograms.

Each plot takes the tables a command wrote (pandas frames) and marks what the analysis found,
so a plot never disagrees with trials.csv. Drawn with matplotlib's non-interactive Agg
backend, at a size that reads in the README. The plots along a hyperparameter axis (the lr
sweep, warmup, the stability frontier) are in ``sweep_plots.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stabsweep.records import TrialStatus

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DIVERGED_MARK = {"marker": "x", "color": "red", "markersize": 9, "markeredgewidth": 2}  # red: no curve is red
BEST = "black"  # lr*'s curve is drawn over the colour map, in black


def figure(height_ratios: tuple[float, ...] = (1.0,), width: float = 7.5, height: float = 4.6) -> tuple[Figure, list]:
    """A figure with stacked axes sharing x (one per ratio). Built without pyplot: no global
    backend is chosen or changed (a notebook's inline display keeps working) and nothing needs
    closing; ``savefig`` renders with Agg."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(
        len(height_ratios), 1, sharex=True, gridspec_kw={"height_ratios": list(height_ratios)}, squeeze=False
    )
    return fig, list(axes[:, 0])


_kept: ContextVar[dict[str, Figure] | None] = ContextVar("kept_figures", default=None)


@contextmanager
def keep_figures() -> Iterator[dict[str, Figure]]:
    """Inside, every figure saved is also kept, by the path it was saved to: the Python API
    hands a run's figures back as objects (api/results.py)."""
    kept: dict[str, Figure] = {}
    token = _kept.set(kept)
    try:
        yield kept
    finally:
        _kept.reset(token)


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    kept = _kept.get()
    if kept is not None:
        kept[str(path)] = fig
    return path


def log_x(ax: Axes, values: pd.Series | np.ndarray) -> None:
    """A log x axis spanning the values, with a margin."""
    positive = np.asarray(values, dtype=float)
    positive = positive[np.isfinite(positive) & (positive > 0)]
    ax.set_xscale("log")
    if positive.size:
        ax.set_xlim(positive.min() / 1.6, positive.max() * 1.6)


def rate_colours(trials: pd.DataFrame, label: str) -> tuple[pd.Series, Any, Any]:
    """Each trial's ``label`` (trial id -> value), and the log colour scale over its positive
    values (None when they do not span a range) with the colour map every curve plot uses."""
    import matplotlib as mpl

    values = trials.set_index("trial_id")[label].astype(float)
    finite = values[np.isfinite(values) & (values > 0)]
    norm = mpl.colors.LogNorm(finite.min(), finite.max()) if len(finite) and finite.min() < finite.max() else None
    return values, norm, mpl.colormaps["viridis"]


def legend(ax: Axes, **kwargs: object) -> None:
    """A legend only when something is labelled: no empty boxes, no entries without marks."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, **kwargs)


def step_curves(
    steps: pd.DataFrame,
    trials: pd.DataFrame,
    column: str,
    path: Path,
    *,
    best_id: int | None = None,
    label: str = "lr",
    smooth: int = 1,
    title: str = "",
    ylabel: str | None = None,
    above_ids: list[int] | None = None,
    baseline: str = "baseline",
) -> Path:
    """``column`` vs step for every trial, coloured by ``label`` (a sequential colour map over
    its log, with a colour bar); seeds of one setting share its colour. The best trial is drawn
    thick in black on top; a diverged trial ends in a red cross at its last finite value.
    ``above_ids`` (the rates just above the best) are drawn thicker too. A trial whose ``label``
    is not a positive number (no clipping, no warmup) is grey and named ``baseline``."""
    import matplotlib as mpl

    fig, (ax,) = figure()
    values, norm, cmap = rate_colours(trials, label)
    statuses = trials.set_index("trial_id")["status"].map(TrialStatus.of).to_dict()
    emphasis = set(above_ids or [])
    drawn_best = False
    for tid in sorted(values.index, key=lambda t: (t == best_id, t in emphasis)):  # highlighted ones on top
        part = steps[steps["trial_id"] == tid]
        if part.empty:
            continue
        curve = part[column].to_numpy(dtype=float)
        if smooth > 1:
            import pandas as pd

            curve = pd.Series(curve).ewm(span=smooth).mean().to_numpy()
        value = values[tid]
        if tid == best_id:
            color, width, drawn_best = BEST, 2.2, True
        elif not np.isfinite(value) or value <= 0 or norm is None:
            color, width = "0.35", 1.2
        else:
            color, width = cmap(norm(value)), 1.6 if tid in emphasis else 0.9
        ax.plot(part["step"], curve, color=color, lw=width, alpha=0.95, zorder=3 if tid == best_id else 2)
        if statuses.get(tid) is TrialStatus.DIVERGED:
            last = np.flatnonzero(np.isfinite(curve))
            if last.size:
                ax.plot(part["step"].iloc[last[-1]], curve[last[-1]], linestyle="none", zorder=4, **DIVERGED_MARK)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel or column.replace("_", " ") + (f" (EMA over {smooth} steps)" if smooth > 1 else ""))
    ax.set_title(title)
    if norm is not None:
        bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01)
        bar.set_label({"lr": "learning rate", "clip": "clip threshold"}.get(label, label.replace("_", " ")))
    if drawn_best:
        ax.plot([], [], color=BEST, lw=2.2, label=f"best ({label} = {values[best_id]:.3g})")
    if any(status is TrialStatus.DIVERGED for status in statuses.values()):
        ax.plot([], [], linestyle="none", label="diverged (stopped there)", **DIVERGED_MARK)
    if (~np.isfinite(values) | (values <= 0)).any():
        ax.plot([], [], color="0.35", lw=1.2, label=baseline)
    legend(ax, loc="best")
    return save(fig, path)


def sharpness(frame: pd.DataFrame, trials: pd.DataFrame, path: Path, *, label: str = "lr", title: str = "") -> Path:
    """The edge-of-stability figure (Cohen et al. 2021): each trial's sharpness (sharpness.csv)
    against step, coloured by ``label`` as the loss curves are, with its stability threshold
    (constant / lr at that step) dashed in the same colour; a trial that diverged ends in a red ×
    at its last reading."""
    import matplotlib as mpl

    fig, (ax,) = figure()
    values, norm, cmap = rate_colours(trials, label)
    statuses = trials.set_index("trial_id")["status"].map(TrialStatus.of).to_dict()
    for tid, part in frame.groupby("trial_id"):
        value = values.get(tid, np.nan)
        color = cmap(norm(value)) if norm is not None and np.isfinite(value) and value > 0 else "0.35"
        ax.plot(part["step"], part["sharpness"], color=color, lw=1.4, marker="o", markersize=2.5)
        # one reading (a trial that failed before the second) draws no line: a dash marks its threshold
        dash = {"marker": "_", "markersize": 14, "markeredgewidth": 1.4} if len(part) == 1 else {}
        ax.plot(part["step"], part["threshold"], color=color, lw=1.0, linestyle="--", alpha=0.8, **dash)
        if statuses.get(tid) is TrialStatus.DIVERGED:
            last = part[np.isfinite(part["sharpness"])]
            if len(last):
                ax.plot(last["step"].iloc[-1], last["sharpness"].iloc[-1], linestyle="none", zorder=4, **DIVERGED_MARK)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    preconditioned = bool(frame["preconditioned"].astype(str).eq("True").any())
    ax.set_ylabel(
        "preconditioned sharpness (top eigenvalue of P⁻¹H)" if preconditioned else "sharpness (top Hessian eigenvalue)"
    )
    ax.set_title(title)
    if norm is not None:
        bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01)
        bar.set_label({"lr": "learning rate"}.get(label, label.replace("_", " ")))
    ax.plot([], [], color="0.3", lw=1.4, label="sharpness")
    ax.plot([], [], color="0.3", lw=1.0, linestyle="--", label="its stability threshold (constant / lr)")
    if any(status is TrialStatus.DIVERGED for status in statuses.values()):
        ax.plot([], [], linestyle="none", label="diverged (after its last reading)", **DIVERGED_MARK)
    # below the axes: inside, it covers the curves that collapse to the bottom or sit at the top
    legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
    return save(fig, path)


def spikes(steps: pd.DataFrame, trials: pd.DataFrame, found: pd.DataFrame, path: Path, *, title: str = "") -> Path:
    """Training loss per trial (coloured by its rate) with each spike marked by its cause: a
    red ● where the data spiked (the same batch at the lowest rate too), an orange ▲ where the
    optimizer did."""
    import matplotlib as mpl

    fig, (ax,) = figure()
    values, norm, cmap = rate_colours(trials, "lr")
    for tid, part in steps.groupby("trial_id"):
        value = values.get(tid, np.nan)
        color = cmap(norm(value)) if norm is not None and np.isfinite(value) else "0.35"
        ax.plot(part["step"], part["train_loss"].astype(float), color=color, lw=0.9, alpha=0.9)
    marks = {
        "data": {"marker": "o", "color": "red", "label": "spike of the data (same batch, lowest rate too)"},
        "optimization": {"marker": "^", "color": "darkorange", "label": "spike of the optimizer"},
    }
    for kind, style in marks.items():
        part = found[found["kind"] == kind] if len(found) else found
        if len(part):
            ax.scatter(
                part["step"], part["loss"].astype(float), s=40, zorder=4, edgecolors="black", linewidths=0.6, **style
            )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    if norm is not None:
        bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01)
        bar.set_label("learning rate")
    legend(ax, loc="best")
    return save(fig, path)


def early_check(steps: pd.DataFrame, evals: pd.DataFrame, lr: float, path: Path, *, title: str = "") -> Path:
    """The early check: training and eval loss at every one of the first steps of the real run."""
    fig, (ax,) = figure()
    ax.plot(steps["step"], steps["train_loss"], color="tab:blue", lw=1, label="training loss (each batch)")
    if len(evals):
        ax.plot(evals["step"], evals["eval_loss"], color="tab:orange", lw=1.2, label="eval loss")
    initial = steps["train_loss"].iloc[0] if len(steps) else None
    if initial is not None and np.isfinite(initial):
        ax.axhline(initial, color="0.5", ls=":", lw=1, label="initial loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or f"early check at lr = {lr:g}")
    legend(ax)
    return save(fig, path)


def grad_norm_report(
    steps: np.ndarray, norms: np.ndarray, threshold: float, path: Path, *, log: bool, title: str
) -> Path:
    """Unclipped gradient norm vs step, with the threshold drawn; the steps above it in red."""
    fig, (ax,) = figure()
    ax.plot(steps, norms, color="tab:blue", lw=0.8, label="global gradient norm before clipping")
    over = norms > threshold
    if over.any():
        ax.scatter(steps[over], norms[over], color="tab:red", s=8, zorder=3, label=f"above it ({over.mean():.0%})")
    ax.axhline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3g}")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("gradient norm (L2, all parameters)")
    ax.set_title(title)
    legend(ax)
    return save(fig, path)


def grad_norm_histogram(norms: np.ndarray, threshold: float, path: Path, *, title: str) -> Path:
    """Histogram of the norms on log-spaced bins, with the threshold drawn."""
    fig, (ax,) = figure()
    finite = norms[np.isfinite(norms) & (norms > 0)]
    low, high = finite.min(), finite.max()
    bins = np.geomspace(low, high if high > low else low * 1.01, 40)
    ax.hist(finite, bins=bins, color="tab:blue", alpha=0.8)
    ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("gradient norm before clipping (log-spaced bins)")
    ax.set_ylabel("steps")
    ax.set_title(title)
    legend(ax)
    return save(fig, path)


def range_test(steps: pd.DataFrame, found: object, suggested: float | None, path: Path, *, title: str) -> Path:
    """Loss against the rate on a log axis: each step's loss faint, the smoothed curve bold (the
    median over seeds in black when there are several), every suggestion and where it blew up."""
    fig, (ax,) = figure()
    seeds = steps.groupby("seed")
    several = seeds.ngroups > 1
    for i, (_, part) in enumerate(seeds):
        ax.plot(part["lr"], part["train_loss"], color="0.78", lw=0.7, label=None if i else "training loss, each step")
        label = None if i else ("smoothed, each seed" if several else "smoothed (bias-corrected EMA)")
        ax.plot(part["lr"], part["smoothed_loss"], color="tab:blue", lw=1.0 if several else 1.8, label=label)
        if "eval_loss" in part and part["eval_loss"].notna().any():
            measured = part[part["eval_loss"].notna()]
            ax.scatter(
                measured["lr"],
                measured["eval_loss"],
                color="tab:orange",
                s=14,
                zorder=3,
                label=None if i else "eval loss (a few batches)",
            )
    if several:
        length = min(len(found.smoothed), len(found.lrs))
        ax.plot(found.lrs[:length], found.smoothed[:length], color="black", lw=1.8, label=f"median, {found.curve} loss")
    for (name, lr), color in zip(found.suggestions.items(), ("tab:green", "tab:purple", "tab:brown"), strict=False):
        used = lr == suggested
        ax.axvline(
            lr,
            color=color,
            ls="-" if used else "--",
            lw=1.6 if used else 1,
            label=f"{name} {lr:.3g}" + (" (used)" if used else ""),
        )
    if found.divergence_lr is not None:
        ax.axvline(found.divergence_lr, color="red", ls=":", lw=1.2, label=f"blew up at {found.divergence_lr:.3g}")
    finite = found.smoothed[np.isfinite(found.smoothed)]
    raw = steps["train_loss"].to_numpy(dtype=float)
    raw = raw[np.isfinite(raw)]
    if finite.size:  # the curve up to where it blew up, not the blown-up values
        low, high = min(finite.min(), raw.min() if raw.size else finite.min()), finite.max()
        ax.set_ylim(low - 0.05 * (high - low), min(high, 3 * finite[0]) + 0.1 * (high - low))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale; it grows every step)")
    ax.set_ylabel(f"{found.curve} loss")
    ax.set_title(title)
    legend(ax, loc="upper left")
    return save(fig, path)


def layers(log: object, path: Path, *, title: str) -> Path:
    """Per parameter tensor, in model order: the gradient norm at the first step, the weight
    norm, and the median update ratio ‖Δw‖/‖w‖ over the logged steps (1e-3 drawn as a guide)."""
    fig, axes = figure((1.0, 1.0, 1.0), height=6.2)
    names = list(log.layers)
    x = np.arange(len(names))
    with np.errstate(all="ignore"), warnings.catch_warnings():  # a tensor whose every ratio is NaN shows none
        warnings.simplefilter("ignore", RuntimeWarning)
        ratio = np.nanmedian(log.update_ratio, axis=0) if len(log.steps) else np.full(len(names), np.nan)
    panels = (
        (log.grad_norm[0], "gradient norm\n(first step)", "tab:blue"),
        (log.weight_norm[0], "weight norm", "tab:green"),
        (ratio, "update ratio\n‖Δw‖/‖w‖ (median)", "tab:orange"),
    )
    for ax, (values, label, color) in zip(axes, panels, strict=True):
        values = np.where(np.asarray(values) > 0, values, np.nan)
        ax.bar(x, values, color=color)
        ax.set_yscale("log")
        ax.set_ylabel(label, fontsize=8)
    axes[2].axhline(1e-3, color="k", ls="--", lw=1, label="1e-3, the usual pace")
    legend(axes[2], loc="best")
    axes[0].set_title(title)
    axes[-1].set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    axes[-1].set_xlabel("parameter tensor (model order)")
    return save(fig, path)


def layer_spikes(
    layers: pd.DataFrame, steps: np.ndarray, norms: np.ndarray, threshold: float, path: Path, *, title: str
) -> Path:
    """Per-layer gradient norms at the logged steps (the layers that dominate the spikes in
    colour, the rest grey), over the global norm with the threshold and the largest spikes."""
    fig, (top, ax) = figure((1.0, 2.2), height=5.6)
    top.plot(steps, norms, color="tab:blue", lw=0.7)
    top.axhline(threshold, color="k", ls="--", lw=1)
    spikes = np.argsort(np.where(np.isfinite(norms), norms, -np.inf))[-5:]
    top.scatter(steps[spikes], norms[spikes], color="tab:red", s=14, zorder=3)
    top.set_ylabel("global norm", fontsize=8)
    top.set_yscale("log")
    top.set_title(title)
    first = layers[layers["trial_id"] == layers["trial_id"].min()]
    peaks = first.groupby("layer")["grad_norm"].max().sort_values(ascending=False)
    colors = dict(zip(peaks.index[:4], ("tab:red", "tab:orange", "tab:purple", "tab:brown"), strict=False))
    for name, part in first.groupby("layer", sort=False):
        color = colors.get(name, "0.75")
        ax.plot(
            part["step"],
            part["grad_norm"],
            color=color,
            lw=1.4 if name in colors else 0.7,
            label=name if name in colors else None,
        )
    for step in steps[spikes]:
        for axis in (top, ax):
            axis.axvline(step, color="tab:red", alpha=0.25, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("gradient norm per layer (logged steps)", fontsize=8)
    legend(ax, loc="best")
    return save(fig, path)
