"""``stabsweep find``: the suggestions on synthetic curves, the ramp, the stop rule, seeds, and
``lr_sweep.lrs: auto`` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from stabsweep.analysis.find import against_full_training, find_suggestions, lr_grid, smoothed, stop_index
from stabsweep.cli import app

runner = CliRunner()
STEPS = 200
LRS = np.geomspace(1e-7, 10, STEPS)


def valley_curve(noise: float = 0.0) -> np.ndarray:
    """Flat at 2.3 until 1e-3, falls to 0.5 by 1e-1, blows up past 1."""
    x = np.log10(LRS)
    curve = 2.3 - 1.8 / (1 + np.exp(-4 * (x + 2))) + np.where(x > 0, 20 * x**2, 0)
    return curve + noise * np.random.default_rng(0).standard_normal(STEPS)


def suggest(curve: np.ndarray, skip: int = 10):
    return find_suggestions(LRS, curve, 0.9, 4.0, skip, "train")


def test_a_clean_valley_gives_every_suggestion_inside_the_descent():
    found = suggest(valley_curve())
    assert found.dip and set(found.suggestions) == {"valley", "steepest", "minimum_div_10"}
    assert 1e-3 < found.suggestions["valley"] < 1e-1  # in the descent, not on the plateau
    assert 3e-3 < found.suggestions["steepest"] < 3e-2  # the steepest part of the logistic drop at 1e-2
    assert found.divergence_lr is not None and found.divergence_lr > 1


def test_a_nan_in_the_middle_is_never_suggested_and_stops_the_curve():
    curve = valley_curve()
    curve[150] = math.nan
    found = suggest(curve)
    assert found.stop_step == 151 and found.divergence_lr == pytest.approx(LRS[150])
    assert all(math.isfinite(lr) and lr < LRS[150] for lr in found.suggestions.values())


@pytest.mark.parametrize("curve", [np.full(STEPS, 2.3), np.linspace(2.3, 5.0, STEPS)], ids=["flat", "rising"])
def test_no_dip_means_no_suggestion(curve):
    found = suggest(curve)
    assert not found.dip and found.suggestions == {}


def test_early_noise_is_skipped():
    curve = valley_curve(noise=0.01)
    curve[:5] = [2.3, 0.2, 2.3, 0.2, 2.3]  # a wild start, as the first batches give
    found = suggest(curve, skip=10)
    assert found.suggestions["minimum_div_10"] > 1e-4  # not the step-2 "minimum"


def test_the_stop_rule_reads_the_smoothed_curve_against_its_lowest_point():
    curve = smoothed(np.array([4.0, 3.0, 1.0, 1.0, 1.0, 3.9, 9.0]), beta=0.0)  # beta 0: no smoothing
    assert stop_index(curve, factor=4.0) == 6  # 9 > 4 × 1; the 3.9 before it is not
    assert stop_index(np.array([1.0, 1.1, 1.2]), factor=4.0) is None


def test_the_grid_reaches_past_the_blow_up_and_below_the_suggestion():
    grid = lr_grid(0.1, 2.0, 1e-7, 10)
    assert grid["min"] == pytest.approx(1e-3) and grid["max"] == pytest.approx(6.0) and grid["num"] == 9
    assert lr_grid(None, None, 1e-7, 10)["min"] == pytest.approx(1e-7)


def test_the_comparison_with_full_training_says_how_far_off_the_range_test_is():
    text = against_full_training(2.1, 0.3)
    assert (
        "blows up at 2.1" in text and "already unstable at 0.3" in text and "overestimates the stable range 7×" in text
    )
    missed = against_full_training(None, 0.3, top=10.0)
    assert "never blew up up to 10" in missed and "already unstable at 0.3" in missed and "misses the edge" in missed
    assert against_full_training(None, None) is None and against_full_training(2.1, None) is None
    short = against_full_training(None, 0.3, top=0.1)  # it never reached the rate that failed
    assert "stopped at 0.1, below 0.3" in short and "find.max_lr" in short


QUICK = ["--set", "find.steps=120", "--set", "train.steps=200", "--set", "train.eval_every=50"]


@pytest.mark.slow
def test_find_writes_its_files_and_the_ramp_follows_the_formula(tmp_path):
    from .conftest import CONFIGS

    result = runner.invoke(app, ["find", str(CONFIGS / "quickstart.yaml"), "--out", str(tmp_path), "--json", *QUICK])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    steps = pd.read_csv(tmp_path / "find" / "steps.csv")
    assert list(steps.columns) == ["trial_id", "seed", "step", "lr", "train_loss", "smoothed_loss", "grad_norm"]
    want = 1e-7 * (10 / 1e-7) ** ((steps["step"].to_numpy() - 1) / 119)
    np.testing.assert_allclose(steps["lr"], want, rtol=1e-6)
    for key in ("suggested_lr", "suggestions", "divergence_lr", "lr_grid", "verdict", "next_command"):
        assert key in summary
    assert summary["suggested_lr"] == summary["suggestions"]["valley"]
    assert (tmp_path / "find" / "plots" / "range_test.png").stat().st_size > 0
    assert summary["next_command"].startswith("stabsweep lr ") and "lr_sweep.lrs={min:" in summary["next_command"]


@pytest.mark.slow
def test_seeds_run_in_one_batch_and_match_each_seed_alone(tmp_path):
    from .conftest import CONFIGS

    config = CONFIGS / "quickstart.yaml"
    many = runner.invoke(app, ["find", str(config), "--out", str(tmp_path / "many"), "-q", "--seeds", "3", *QUICK])
    alone = runner.invoke(app, ["find", str(config), "--out", str(tmp_path / "one"), "-q", "--set", "seed=1", *QUICK])
    assert many.exit_code == 0 and alone.exit_code == 0
    steps = pd.read_csv(tmp_path / "many" / "find" / "steps.csv")
    assert sorted(steps["seed"].unique()) == [0, 1, 2]
    one = pd.read_csv(tmp_path / "one" / "find" / "steps.csv")
    got = steps[steps["seed"] == 1]["train_loss"].to_numpy()[:20]
    np.testing.assert_allclose(got, one["train_loss"].to_numpy()[:20], rtol=1e-5)


@pytest.mark.slow
def test_lrs_auto_sweeps_the_grid_the_range_test_proposes(tmp_path):
    from .conftest import CONFIGS

    args = ["lr", str(CONFIGS / "quickstart.yaml"), "--out", str(tmp_path), "--json", "--set", "lr_sweep.lrs=auto"]
    result = runner.invoke(app, [*args, "--set", "find.steps=300", "--set", "train.steps=400"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["lr_grid_source"] == "find"
    found = json.loads((tmp_path / "find" / "summary.json").read_text())
    assert summary["lr_grid"] == found["lr_grid"]
    trials = pd.read_csv(tmp_path / "lr" / "trials.csv")
    assert len(trials) == found["lr_grid"]["num"]
    rates = sorted(trials["lr"])
    assert summary["best_lr"] is not None and rates[0] < summary["best_lr"] < rates[-1]  # lr* inside the grid
    assert summary["unstable_base_lr"] is not None  # and the unstable rate too
    then = runner.invoke(
        app,
        [
            "find",
            str(CONFIGS / "quickstart.yaml"),
            "--out",
            str(tmp_path),
            "--force",
            "--json",
            "--set",
            "find.steps=300",
        ],
    )
    assert "Against the lr sweep" in json.loads(then.stdout)["verdict"]


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("find.min_lr=10", "min_lr"),
        ("find.max_lr=-1", "find.max_lr"),
        ("find.steps=5", "find.steps"),
        ("find.suggestion=lowest", "find.suggestion"),
        ("find.skip_begin=500", "skip_begin"),
    ],
)
def test_bad_range_test_settings_name_the_key(setting, key, tmp_path):
    from .conftest import CONFIGS

    result = runner.invoke(app, ["find", str(CONFIGS / "smoke.yaml"), "--out", str(tmp_path), "--set", setting])
    assert result.exit_code == 2 and key in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_with_eval_every_the_suggestion_reads_the_eval_loss_of_a_few_batches(tmp_path):
    from .conftest import CONFIGS

    args = ["find", str(CONFIGS / "quickstart.yaml"), "--out", str(tmp_path), "--json", *QUICK]
    result = runner.invoke(app, [*args, "--set", "find.eval_every=5", "--set", "find.eval_batches=1"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["curve"] == "eval" and "from the eval loss" in summary["verdict"]
    steps = pd.read_csv(tmp_path / "find" / "steps.csv")
    measured = steps[steps["eval_loss"].notna()]
    assert (measured["step"] % 5 == 0).all() and len(measured) >= 10
