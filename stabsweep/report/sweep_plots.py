"""Plots along a hyperparameter axis: the lr sweep, the warmup sweep, with and without a fix.

Compute, then render: :func:`series_points` turns a command's trials into plain per-rate
numbers (mean, spread, each seed, which failed), and :func:`rate_axis` draws any number of such
series on one learning-rate axis, the playbook's "validation loss against base learning rate,
with and without the fix". A trial whose loss means nothing (diverged, learned nothing) has no
height: it is a cross in a labelled strip above the axis, one row per series, at its rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stabsweep.records import TrialStatus
from stabsweep.report.plots import figure, legend, log_x, save

if TYPE_CHECKING:
    import pandas as pd

UNSTABLE = "tab:orange"  # a feasible trial whose loss went up: drawn in this colour
MARKERS = ("o", "s", "^", "D", "P")  # one per series when several share the axis: points at one place stay told apart


@dataclass
class Series:
    """One line of a rate axis: per rate, the objective over its feasible seeds and which failed."""

    label: str
    color: str
    rates: np.ndarray  # the rates with a feasible seed
    mean: np.ndarray  # mean objective over feasible seeds, per rate (NaN where a seed failed: no line)
    low: np.ndarray  # the range over seeds, per rate
    high: np.ndarray
    points: list[tuple[float, float, bool]] = field(default_factory=list)  # every feasible seed: rate, value, unstable
    crosses: list[tuple[float, str]] = field(default_factory=list)  # every infeasible or failed seed: rate, status
    p_unstable: list[tuple[float, float]] = field(default_factory=list)  # per rate
    unstable_rate: float | None = None  # marked with a dotted line
    seeds: int = 1


def series_points(
    trials: pd.DataFrame, x: str, objective: str, label: str, color: str, unstable_rate: float | None = None
) -> Series:
    """A series from trials (one row per rate and seed), along column ``x``."""
    statuses = trials["status"].map(TrialStatus.of)
    rates, means, lows, highs, points, crosses, p_unstable = [], [], [], [], [], [], []
    seeds = 1
    for rate, part in trials.assign(status=statuses).groupby(x, sort=True):
        seeds = max(seeds, len(part))
        good = part[part["status"].map(lambda s: s.feasible) & part[objective].notna()]
        for row in part.itertuples():
            if row.status.feasible and row.Index in good.index:
                points.append((float(rate), float(getattr(row, objective)), row.status is TrialStatus.UNSTABLE))
            else:
                crosses.append((float(rate), row.status.value))
        judged = part[part["status"] != TrialStatus.FAILED]
        if len(judged):
            p_unstable.append((float(rate), float(judged["status"].map(lambda s: s.failing).mean())))
        if len(good):
            rates.append(float(rate))
            values = good[objective].to_numpy(dtype=float)
            means.append(values.mean() if len(good) == len(part) else np.nan)
            lows.append(values.min())
            highs.append(values.max())
    return Series(
        label,
        color,
        np.array(rates),
        np.array(means),
        np.array(lows),
        np.array(highs),
        points,
        crosses,
        p_unstable,
        unstable_rate,
        seeds,
    )


def rate_axis(
    series: list[Series],
    path: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    best: float | None = None,
    best_label: str = "lr*",
) -> Path:
    """The series on one log axis: a line through the mean over seeds where every seed is
    feasible, the spread over seeds as a band, each seed a dot (orange when unstable), the
    infeasible seeds as crosses in the strip above, and, with several seeds, ``p_unstable``
    (the share of seeds that failed) in a panel below."""
    several = any(s.seeds > 1 for s in series)
    ratios = (0.55, 4.0, 1.5) if several else (0.55, 4.0)
    ratios = (0.25 + 0.3 * len(series), *ratios[1:])
    fig, axes = figure(ratios, height=(5.6 if several else 4.8) + 0.25 * (len(series) - 1))
    strip, ax = axes[0], axes[1]
    everything = [r for s in series for r in (*s.rates, *(c[0] for c in s.crosses))]
    many = len(series) > 1  # then each series has its own marker, and its unstable rate is a ▼ in its colour
    any_unstable = any_cross = any_edge = False
    for row, s in enumerate(series):
        marker = MARKERS[row % len(MARKERS)] if many else "o"
        label = s.label
        if many and s.unstable_rate is not None:
            label += f" (unstable at {s.unstable_rate:.3g})"
        if len(s.rates):
            ax.plot(s.rates, s.mean, "-", color=s.color, lw=1.8, label=label, zorder=2)
            if s.seeds > 1:
                ax.fill_between(s.rates, s.low, s.high, color=s.color, alpha=0.15, lw=0)
        elif many:
            ax.scatter([], [], marker=marker, color=s.color, label=label)
        for rate, value, unstable in s.points:
            any_unstable |= unstable
            if unstable and many:  # hollow, in the series' colour: several colours are taken already
                face, edge = "white", s.color
            else:
                face, edge = (UNSTABLE if unstable else s.color), "none"
            ax.scatter(
                rate, value, s=22 if s.seeds > 1 else 36, marker=marker, c=face, edgecolors=edge, lw=1.4, zorder=3
            )
        for rate, status in s.crosses:
            any_cross = True
            cross = "s" if status == TrialStatus.FAILED.value else "x"
            strip.scatter(rate, row, marker=cross, color=s.color if many else "red", s=48, linewidths=2)
        if s.unstable_rate is not None and many:  # lines at one rate would hide each other: a ▼ per series
            any_edge = True
            ax.scatter(
                s.unstable_rate,
                0.98 - 0.045 * row,
                marker="v",
                s=60,
                color=s.color,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
                zorder=4,
            )
        elif s.unstable_rate is not None:
            for axis in axes:
                axis.axvline(s.unstable_rate, color="red", ls=":", lw=1.2)
            ax.plot([], [], ls=":", color="red", label=f"unstable rate {s.unstable_rate:.3g}")
        if several and s.p_unstable:
            rates, shares = zip(*s.p_unstable, strict=True)
            axes[2].plot(rates, shares, "o-", color=s.color, ms=4, lw=1.2)
    if any_edge:  # room above the data for a row of ▼ per series
        low, high = ax.get_ylim()
        ax.set_ylim(low, high + (high - low) * 0.05 * (len(series) + 1))
    best_color = "black" if many else "tab:green"
    if best is not None:
        for axis in axes:
            axis.axvline(best, color=best_color, ls="--", lw=1.2)
        ax.plot([], [], ls="--", color=best_color, label=f"{best_label} = {best:.3g}")
    if any_edge:
        ax.scatter([], [], marker="v", s=60, color="0.3", label="each line's unstable rate")
    if any_unstable and many:
        ax.scatter([], [], c="white", edgecolors="0.3", lw=1.4, s=36, label="hollow: unstable (feasible) trial")
    elif any_unstable:
        ax.scatter([], [], color=UNSTABLE, s=36, label="unstable (feasible) trial")
    strip.set_ylim(-0.7, len(series) - 0.3)
    if many:  # a row per series, named
        strip.set_yticks(range(len(series)), [s.label for s in series], fontsize=7)
        for tick, s in zip(strip.get_yticklabels(), series, strict=True):
            tick.set_color(s.color)
    else:
        strip.set_yticks([])
        strip.set_ylabel("no loss", rotation=0, ha="right", va="center", fontsize=8)
    strip.set_title(title, pad=14)
    note = "× diverged or learned nothing (no loss to show), ■ raised" if any_cross else "no trial failed"
    strip.text(0.99, 1.04, note, transform=strip.transAxes, fontsize=7, color="0.35", va="bottom", ha="right")
    for spine in ("top", "right"):
        strip.spines[spine].set_visible(False)
    ax.set_ylabel(ylabel)
    log_x(ax, everything)
    if several:
        axes[2].set_ylim(-0.05, 1.05)
        axes[2].set_ylabel("p_unstable")
    axes[-1].set_xlabel(xlabel)
    legend(ax, loc="best")
    return save(fig, path)


def warmup_axis(probes: pd.DataFrame, path: Path, picks: dict[float, int | None], *, title: str = "") -> Path:
    """Best eval loss vs warmup length, one line per base rate; the no-warmup baseline as a
    dashed level (or a note that it failed); the pick as a dotted line."""
    fig, (ax,) = figure()
    objective = "best_eval_loss" if probes["best_eval_loss"].notna().any() else "final_train_loss"
    colors = ("tab:blue", "tab:green", "tab:purple", "tab:brown")
    statuses = probes["status"].map(TrialStatus.of)
    for (base_lr, part), color in zip(probes.assign(status=statuses).groupby("base_lr"), colors, strict=False):
        ramps = part[part["warmup_steps"] > 0]
        good = ramps[ramps["status"].map(lambda s: s.feasible)].groupby("warmup_steps")[objective].mean()
        ax.plot(good.index, good.values, "o-", color=color, label=f"base lr {base_lr:.3g}, with warmup")
        bad = ramps[ramps["status"].map(lambda s: not s.feasible)]
        if len(bad):
            ax.scatter(
                bad["warmup_steps"],
                np.full(len(bad), 0.96),
                marker="x",
                color="red",
                s=48,
                transform=ax.get_xaxis_transform(),
                zorder=3,
            )
        baseline = part[part["warmup_steps"] == 0]
        if len(baseline) and baseline["status"].map(lambda s: s.feasible).all():
            ax.axhline(baseline[objective].mean(), color=color, ls="--", lw=1, label=f"no warmup at {base_lr:.3g}")
        elif len(baseline):
            ax.plot([], [], "x", color="red", label=f"no warmup at {base_lr:.3g}: {baseline['status'].iloc[0].value}")
        if picks.get(float(base_lr)):
            ax.axvline(picks[float(base_lr)], color=color, ls=":", lw=1.2, label=f"pick: {picks[float(base_lr)]} steps")
    if (statuses[probes["warmup_steps"] > 0].map(lambda s: not s.feasible)).any():
        ax.scatter([], [], marker="x", color="red", s=48, label="infeasible probe (at the top: no loss to show)")
    log_x(ax, probes.loc[probes["warmup_steps"] > 0, "warmup_steps"])
    ax.set_xlabel("warmup steps (each probe: the ramp, then 2 × as many steps at the base rate)")
    ax.set_ylabel(objective.replace("_", " "))
    ax.set_title(title or "warmup sweep")
    legend(ax, loc="best")
    return save(fig, path)


def base_rate(trials: pd.DataFrame, lr_trials: pd.DataFrame | None, path: Path, *, title: str = "") -> Path:
    """Eval loss vs base learning rate without warmup (the lr sweep) and with it (the best
    probe per rate, and the full run with the picked warmup): the playbook's figure."""
    objective = "best_eval_loss"
    series = []
    if lr_trials is not None:
        sweep = lr_trials[lr_trials.get("phase", "sweep") == "sweep"]
        series.append(series_points(sweep, "lr", objective, "lr sweep, no warmup", "0.45"))
    baselines = trials[(trials["phase"] == "probe") & (trials["warmup_steps"] == 0)]
    series.append(series_points(baselines, "base_lr", objective, "no warmup (probe length)", "tab:red"))
    probes = trials[(trials["phase"] == "probe") & (trials["warmup_steps"] > 0)]
    if len(probes):
        statuses = probes["status"].map(TrialStatus.of)
        best = probes[statuses.map(lambda s: s.feasible)].sort_values(objective).groupby("base_lr").head(1)
        rest = probes[~probes["base_lr"].isin(best["base_lr"])].groupby("base_lr").head(1)
        series.append(series_points(pd_concat(best, rest), "base_lr", objective, "best warmup probe", "tab:blue"))
    confirm = trials[trials["phase"] == "confirm"]
    if len(confirm):
        series.append(series_points(confirm, "base_lr", objective, "full run with the warmup", "tab:green"))
    return rate_axis(
        series, path, title=title or "with and without warmup", xlabel="base learning rate", ylabel="best eval loss"
    )


def pd_concat(*frames: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    return pd.concat(frames)
