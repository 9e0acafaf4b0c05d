"""What an lr sweep found: ``best_lr``, ``unstable_base_lr``, the per-rate table and the warnings.

The rules (docs/contract.md, "Detection rules"), for a sweep of one or several seeds per rate:

- a rate is *feasible* when every seed's trial is ok or unstable (and has an objective);
- ``best_lr`` is the feasible rate with the lowest mean objective over its seeds;
- ``unstable_base_lr`` is the smallest rate above ``best_lr`` where any seed failed: diverged,
  unstable or learned nothing (``unstable_kind`` says which; the most severe when seeds
  differ), with ``p_unstable``, the share of its seeds that failed;
- a rate at or above ``best_lr`` where some seeds failed and others did not is *at the edge*
  of stability: one seed's verdict there could flip with the seed (below lr*, a seed that
  learned too little in time is slow, not unstable).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from stabsweep.records import TrialStatus

if TYPE_CHECKING:
    import pandas as pd

MOSTLY_INFEASIBLE = 0.5
SEVERITY = (TrialStatus.DIVERGED, TrialStatus.LEARNED_NOTHING, TrialStatus.UNSTABLE)  # most severe first


def objective_column(trials: pd.DataFrame) -> str:
    """``best_eval_loss`` when the workload has eval data, else the final smoothed train loss."""
    if "best_eval_loss" in trials and trials["best_eval_loss"].notna().any():
        return "best_eval_loss"
    return "final_train_loss"


@dataclass
class LrFindings:
    best_lr: float | None
    unstable_base_lr: float | None
    infeasible_fraction: float
    objective: str
    best_objective: float | None = None
    best_trial_id: int | None = None
    unstable_trial_id: int | None = None
    unstable_kind: str | None = None  # diverged | unstable | learned_nothing
    unstable_reason: str | None = None
    p_unstable: float | None = None  # at the unstable base rate: the share of its seeds that failed
    edge_rates: list[float] = field(default_factory=list)  # rates where the seeds disagree
    rates: list[dict[str, Any]] = field(default_factory=list)  # one row per rate
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rate_table(trials: pd.DataFrame, objective: str) -> pd.DataFrame:
    """One row per learning rate: its seeds, their statuses, ``p_unstable`` (the share of its
    judged seeds that diverged, were unstable or learned nothing) and the objective's mean,
    spread (standard deviation) and range over the feasible seeds."""
    import pandas as pd

    rows = []
    for lr, part in trials.groupby("lr", sort=True):
        statuses = part["status"].map(TrialStatus.of)
        judged = statuses[statuses != TrialStatus.FAILED]
        values = part.loc[statuses.map(lambda s: s.feasible), objective].dropna()
        rows.append(
            {
                "lr": float(lr),
                "seeds": len(part),
                **{status.value: int((statuses == status).sum()) for status in TrialStatus},
                "p_unstable": round(float(judged.map(lambda s: s.failing).mean()), 4) if len(judged) else None,
                "feasible": len(values) == len(part),
                "objective_mean": float(values.mean()) if len(values) else None,
                "objective_std": float(values.std(ddof=0)) if len(values) else None,
                "objective_min": float(values.min()) if len(values) else None,
                "objective_max": float(values.max()) if len(values) else None,
            }
        )
    return pd.DataFrame(rows)


def lr_findings(trials: pd.DataFrame) -> LrFindings:
    """Apply the selection rules to the sweep's trials (one row per rate and seed)."""
    trials = trials.assign(status=trials["status"].map(TrialStatus.of)).sort_values(["lr", "trial_id"])
    judged = trials[trials["status"] != TrialStatus.FAILED]
    infeasible = judged["status"].map(lambda s: s.infeasible)
    fraction = float(infeasible.mean()) if len(judged) else 1.0
    objective = objective_column(trials)
    rates = rate_table(trials, objective)
    found = LrFindings(None, None, round(fraction, 4), objective, rates=_records(rates))
    mixed = [float(r.lr) for r in rates.itertuples() if r.p_unstable is not None and 0 < r.p_unstable < 1]

    failed = int((trials["status"] == TrialStatus.FAILED).sum())
    if failed:
        found.warnings.append(f"{failed} of {len(trials)} trials failed (raised); see the 'error' column of trials.csv")
    if fraction > MOSTLY_INFEASIBLE:
        found.warnings.append(
            f"most trials ({int(infeasible.sum())} of {len(judged)}) are infeasible: "
            "the grid is too high or the model/config is wrong (stabsweep doctor checks the model)"
        )
    feasible = rates[rates["feasible"]]
    if feasible.empty:
        found.edge_rates = mixed
        return found

    best = feasible.loc[feasible["objective_mean"].idxmin()]
    found.best_lr, found.best_objective = float(best["lr"]), float(best["objective_mean"])
    found.edge_rates = [lr for lr in mixed if lr >= found.best_lr]  # below lr*, a seed that learned less is no edge
    at_best = trials[trials["lr"] == found.best_lr]
    found.best_trial_id = int(at_best.loc[at_best[objective].idxmin(), "trial_id"])
    unstable_at_best = at_best[at_best["status"] == TrialStatus.UNSTABLE]
    if len(unstable_at_best):
        found.warnings.append(
            f"the best rate {found.best_lr:.3g} is itself unstable ({unstable_at_best.iloc[0]['reason']}): "
            "the case warmup and clipping fix first"
        )

    above = rates[(rates["lr"] > found.best_lr) & (rates["p_unstable"].fillna(0) > 0)]
    if not above.empty:
        rate = above.iloc[0]
        found.unstable_base_lr, found.p_unstable = float(rate["lr"]), float(rate["p_unstable"])
        failing = trials[(trials["lr"] == found.unstable_base_lr) & trials["status"].map(lambda s: s.failing)]
        worst = min(failing["status"], key=SEVERITY.index)
        first = failing[failing["status"] == worst].iloc[0]
        found.unstable_kind, found.unstable_trial_id = worst.value, int(first["trial_id"])
        found.unstable_reason = _failure_reason(first, len(failing), int(rate["seeds"]), worst)

    grid = sorted(rates["lr"])
    if math.isclose(found.best_lr, grid[0]):
        found.warnings.append(f"best_lr {found.best_lr:.3g} is the lowest rate in the grid: extend the grid downwards")
    elif math.isclose(found.best_lr, grid[-1]):
        found.warnings.append(f"best_lr {found.best_lr:.3g} is the highest rate in the grid: extend the grid upwards")
    if found.unstable_base_lr is not None:
        next_rate = next(lr for lr in grid if lr > found.best_lr)
        if math.isclose(next_rate, found.unstable_base_lr):
            found.warnings.append(
                f"best_lr {found.best_lr:.3g} sits right below the unstable rate {found.unstable_base_lr:.3g}: "
                "instability is what limits the learning rate, the case warmup and clipping fix"
            )
    return found


def _failure_reason(trial: Any, failing: int, seeds: int, kind: TrialStatus) -> str:
    reason = str(trial["reason"])
    if seeds == 1:
        return reason
    worst = kind.value.replace("_", " ")
    return f"{failing} of {seeds} seeds failed, the worst {worst}: seed {int(trial['seed'])}: {reason}"


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain dicts, NaN as None (for summary.json)."""
    rows = frame.to_dict("records")
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows]


def verdict(found: LrFindings) -> str:
    """The lr sweep's finding in words."""
    if found.best_lr is None:
        return "No learning rate in the grid trained: every trial was infeasible or failed."
    best = f"Best learning rate {found.best_lr:.3g} ({found.objective.replace('_', ' ')} {found.best_objective:.4g})"
    if found.unstable_base_lr is None:
        text = f"{best}; no rate above it diverged, was unstable or learned nothing: the grid stops short of it."
    else:
        kind = (found.unstable_kind or "").replace("_", " ")
        text = f"{best}; training becomes unstable at {found.unstable_base_lr:.3g} ({kind}: {found.unstable_reason})."
    if found.edge_rates:
        rates = ", ".join(f"{lr:.3g}" for lr in found.edge_rates)
        text += f" At the edge (the seeds disagree): {rates}."
    return text
