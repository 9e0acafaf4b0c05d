"""Reading a sweep's CSV files back, and comparing two runs of the same sweep."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

EDGE_LR = 0.1  # the smoke sweep's rates above this sit on the edge of divergence (lr = 0.3 ... 10)


def sweep_files(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """trials.csv (without wall-clock time), steps.csv and evals.csv of one finished sweep."""
    trials = pd.read_csv(folder / "trials.csv").drop(columns=["wall_seconds"])
    return trials, pd.read_csv(folder / "steps.csv"), pd.read_csv(folder / "evals.csv")


def assert_same_sweep(got: tuple[pd.DataFrame, ...], want: tuple[pd.DataFrame, ...]) -> None:
    """The same trials with the same outcomes, and the same figures wherever training is calm.

    Statuses, steps run and diverged steps must match exactly; below the edge every figure
    must match within 1e-5. On the edge of divergence a different thread count (a worker has
    one core) or batch composition moves the last digits of a float32 sum and the edge
    amplifies them within tens of steps, so there only the first 20 steps are compared, as in
    the batch-vs-alone bar.
    """
    (trials, steps, evals), (want_trials, want_steps, want_evals) = got, want
    outcome = ["trial_id", "lr", "status", "steps_run", "diverged_step"]
    pd.testing.assert_frame_equal(trials[outcome], want_trials[outcome])
    calm = trials["lr"] <= EDGE_LR
    pd.testing.assert_frame_equal(trials[calm], want_trials[calm], rtol=1e-5)
    calm_steps = steps["trial_id"].isin(trials["trial_id"][calm])
    pd.testing.assert_frame_equal(steps[calm_steps], want_steps[calm_steps], rtol=1e-5)
    pd.testing.assert_frame_equal(steps[steps["step"] <= 20], want_steps[want_steps["step"] <= 20], rtol=1e-4)
    calm_evals = evals["trial_id"].isin(trials["trial_id"][calm])
    pd.testing.assert_frame_equal(evals[calm_evals], want_evals[calm_evals], rtol=1e-5)
    pd.testing.assert_frame_equal(evals[["trial_id", "step"]], want_evals[["trial_id", "step"]])
