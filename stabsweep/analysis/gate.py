"""The stability gate: did this run get less stable than a baseline run?

Every command that can be gated (``lr``, ``tune``, ``find``) writes a ``stability`` block in its
``summary.json`` (:func:`stability_block`, :func:`range_stability`): the unstable base rate, the
best objective, each swept rate's feasibility, the grid, and the setup that makes two runs
comparable. :func:`compare` reads two such blocks and applies three criteria:

- ``unstable_base_lr``: the rate where training becomes unstable may fall by at most
  ``gate.unstable_factor`` (2×). The unstable rate is a grid value, so the fall is also counted
  in grid steps; with a grid coarser than the factor (3.16× per step for 2 rates a decade), one
  step down fails. No unstable rate in the grid counts as one grid step above its top.
- ``best_objective``: may get worse by at most ``gate.objective_tolerance`` (5%) of the
  baseline's, relative. None (nothing feasible) fails.
- ``feasible_rates``: a rate whose every seed was feasible (ok or unstable) in the baseline
  must still have every seed feasible.

:func:`differences` names what makes two runs incomparable: another workload, grid, length or
number of seeds. The gate refuses those (exit 2) unless ``--baseline-any`` is given.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

CRITERIA = ("unstable_base_lr", "best_objective", "feasible_rates")


@dataclass(frozen=True)
class Criterion:
    name: str
    passed: bool
    baseline: Any
    current: Any
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def stability_block(
    best_lr: float | None,
    unstable_base_lr: float | None,
    best_objective: float | None,
    objective: str,
    rates: list[dict[str, Any]],
    setup: dict[str, Any],
) -> dict[str, Any]:
    """What the gate reads from a swept grid (``lr``, and the chosen mitigation of ``tune``)."""
    grid = [float(r["lr"]) for r in rates]
    return {
        "kind": "grid",
        "best_lr": best_lr,
        "unstable_base_lr": unstable_base_lr,
        "best_objective": best_objective,
        "objective": objective,
        "rates": [{"lr": float(r["lr"]), "feasible": bool(r["feasible"])} for r in rates],
        "grid": grid,
        "setup": {**setup, "lrs": grid},
    }


def range_stability(
    suggested_lr: float | None, divergence_lr: float | None, lowest_loss: float | None, setup: dict[str, Any]
) -> dict[str, Any]:
    """What the gate reads from a range test: where the loss diverged, and its lowest smoothed
    value. A ramp has no grid: the rates are compared as a ratio."""
    return {
        "kind": "ramp",
        "best_lr": suggested_lr,
        "unstable_base_lr": divergence_lr,
        "best_objective": lowest_loss,
        "objective": "lowest smoothed loss",
        "rates": [],
        "grid": [],
        "setup": setup,
    }


def differences(baseline: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The setup keys whose values differ, each as 'key: baseline → current'."""
    keys = sorted(set(baseline["setup"]) | set(current["setup"]))
    out = []
    for key in keys:
        old, new = baseline["setup"].get(key), current["setup"].get(key)
        if key == "lrs" and old and new and len(old) == len(new) and _same_rates(old, new):
            continue
        if old != new and key == "lrs":
            out.append(f"lrs: {_grid_text(old)} → {_grid_text(new)}")
        elif old != new:
            out.append(f"{key}: {_short(old)} → {_short(new)}")
    return out


def compare(
    baseline: dict[str, Any], current: dict[str, Any], unstable_factor: float, tolerance: float
) -> list[Criterion]:
    """The three criteria of the module docstring, in order, passing ones included."""
    criteria = [_unstable(baseline, current, unstable_factor), _objective(baseline, current, tolerance)]
    if baseline["kind"] == "grid" and current["kind"] == "grid":
        criteria.append(_feasible(baseline, current))
    return criteria


def _grid_steps(grid: list[float], low: float, high: float) -> int:
    """How many grid values lie in [low, high): the steps from high down to low."""
    return sum(1 for g in grid if low * (1 - 1e-9) <= g < high * (1 - 1e-9))


def _edge(block: dict[str, Any]) -> tuple[float | None, str]:
    """A block's unstable rate, or one grid step past its top when none was found (and how to say it)."""
    rate = block["unstable_base_lr"]
    if rate is not None:
        return float(rate), f"{rate:.3g}"
    grid = block["grid"]
    if len(grid) < 2:
        return None, "none found"
    return grid[-1] * grid[-1] / grid[-2], f"none in the grid (stable up to {grid[-1]:.3g})"


def _unstable(baseline: dict[str, Any], current: dict[str, Any], factor: float) -> Criterion:
    name = "unstable_base_lr"
    (old, old_text), (new, new_text) = _edge(baseline), _edge(current)
    if old is None or new is None:  # a ramp that never diverged: nothing to compare
        passed = new is None or old is not None
        return Criterion(
            name, passed, baseline["unstable_base_lr"], current["unstable_base_lr"], f"{old_text} → {new_text}"
        )
    fell = old / new
    passed = fell <= factor * (1 + 1e-9)
    if current["kind"] == "grid" and current["grid"]:
        grid = sorted(set(current["grid"]) | set(baseline["grid"]))
        steps = _grid_steps(grid, new, old) if new < old else 0
        ratio = grid[1] / grid[0] if len(grid) > 1 else math.nan
        how = f"{steps} grid step{'s' if steps != 1 else ''} down ({fell:.3g}×; a grid step is {ratio:.3g}×)"
    else:
        how = f"{fell:.3g}×"
    verdict = "fell" if fell > 1 + 1e-9 else "did not fall"
    message = f"{verdict}: baseline {old_text} → now {new_text}"
    message += f", {how}" if fell > 1 + 1e-9 else ""
    message += f"; the gate allows a fall of {factor:g}×"
    return Criterion(name, passed, baseline["unstable_base_lr"], current["unstable_base_lr"], message)


def _objective(baseline: dict[str, Any], current: dict[str, Any], tolerance: float) -> Criterion:
    name = "best_objective"
    old, new, what = baseline["best_objective"], current["best_objective"], current["objective"]
    if old is None:
        return Criterion(name, True, old, new, f"the baseline had no {what}: nothing to compare")
    if new is None:
        return Criterion(name, False, old, new, f"baseline {what} {old:.4g} → now nothing feasible")
    worse = (new - old) / abs(old) if old else (math.inf if new > old else 0.0)
    passed = worse <= tolerance + 1e-12
    change = f"{abs(worse):.1%} {'worse' if worse > 0 else 'better'}"
    return Criterion(
        name,
        passed,
        old,
        new,
        f"baseline {what} {old:.4g} → now {new:.4g} ({change}; the gate allows {tolerance:.0%} worse)",
    )


def _feasible(baseline: dict[str, Any], current: dict[str, Any]) -> Criterion:
    name = "feasible_rates"
    now = {round(r["lr"], 12): r["feasible"] for r in current["rates"]}
    was = [r["lr"] for r in baseline["rates"] if r["feasible"]]
    lost = [lr for lr in was if now.get(round(lr, 12)) is False]
    kept = [lr for lr in was if now.get(round(lr, 12))]
    listed = ", ".join(f"{lr:.3g}" for lr in lost)
    if lost:
        return Criterion(name, False, was, kept, f"feasible in the baseline, infeasible now: {listed}")
    return Criterion(name, True, was, kept, f"all {len(kept)} rates feasible in the baseline still are")


def _short(value: Any, limit: int = 80) -> str:
    from stabsweep.errors import short_repr

    return short_repr(value, limit)


def _same_rates(old: list[float], new: list[float]) -> bool:
    return all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(old, new, strict=True))


def _grid_text(grid: list[float] | None) -> str:
    if not grid:
        return "none"
    return f"{len(grid)} rates {grid[0]:.3g} … {grid[-1]:.3g}" if len(grid) > 1 else f"1 rate {grid[0]:.3g}"
