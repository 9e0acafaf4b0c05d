"""What an lr sweep found: ``best_lr``, ``unstable_base_lr`` and the warnings (README, Detection rules)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from stabsweep.records import FEASIBLE, INFEASIBLE, TrialStatus

if TYPE_CHECKING:
    import pandas as pd

MOSTLY_INFEASIBLE = 0.5


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
    unstable_reason: str | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_findings(trials: pd.DataFrame) -> LrFindings:
    """Apply the selection rules to the sweep's trials (one row per learning rate)."""
    trials = trials.sort_values("lr").assign(status=trials["status"].map(TrialStatus.of))
    judged = trials[trials["status"] != TrialStatus.FAILED]
    infeasible = judged["status"].isin(INFEASIBLE)
    fraction = float(infeasible.mean()) if len(judged) else 1.0
    objective = objective_column(trials)
    feasible = judged[judged["status"].isin(FEASIBLE) & judged[objective].notna()]
    found = LrFindings(None, None, round(fraction, 4), objective)

    failed = int((trials["status"] == TrialStatus.FAILED).sum())
    if failed:
        found.warnings.append(f"{failed} of {len(trials)} trials failed (raised); see the 'error' column of trials.csv")
    if fraction > MOSTLY_INFEASIBLE:
        found.warnings.append(
            f"most trials ({infeasible.sum()} of {len(judged)}) are infeasible: "
            "the grid is too high or the model/config is wrong"
        )
    if feasible.empty:
        return found

    best = feasible.loc[feasible[objective].idxmin()]
    found.best_lr, found.best_trial_id = float(best["lr"]), int(best["trial_id"])
    found.best_objective = float(best[objective])
    above = judged[(judged["lr"] > found.best_lr) & judged["status"].isin({TrialStatus.DIVERGED, TrialStatus.UNSTABLE})]
    if not above.empty:
        unstable = above.iloc[0]
        found.unstable_base_lr, found.unstable_trial_id = float(unstable["lr"]), int(unstable["trial_id"])
        found.unstable_reason = str(unstable["reason"])

    grid = sorted(trials["lr"])
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
