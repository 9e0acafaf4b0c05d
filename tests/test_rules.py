"""The detection rules on synthetic loss curves (docs/contract.md, "Detection rules")."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stabsweep.analysis.rules import divergence_step, judge
from stabsweep.config.schema import DetectConfig
from stabsweep.records import TrialStatus

DETECT = DetectConfig()
STEPS = 400


def decline(start: float = 2.3, end: float = 0.2, steps: int = STEPS, noise: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    curve = start * (end / start) ** (np.arange(steps) / (steps - 1))
    return curve * (1 + noise * rng.standard_normal(steps))


def test_steady_decline_is_ok():
    verdict = judge(decline(noise=0.05), DETECT, num_classes=10)
    assert verdict.status is TrialStatus.OK
    assert verdict.diverged_step is None


def test_slow_steady_decline_is_ok():
    verdict = judge(decline(2.3, 1.9), DETECT, num_classes=10)
    assert verdict.status is TrialStatus.OK


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_diverges_at_its_step(bad):
    losses = decline()
    losses[37] = bad
    verdict = judge(losses, DETECT)
    assert verdict.status is TrialStatus.DIVERGED
    assert verdict.diverged_step == 38
    assert "non-finite" in verdict.reason and "step 38" in verdict.reason


def test_loss_above_divergence_factor_that_stays_diverges_at_its_first_step():
    losses = decline()
    losses[100:] = 4.01 * losses[0]
    verdict = judge(losses, DETECT)
    assert verdict.status is TrialStatus.DIVERGED and verdict.diverged_step == 101
    assert "step 101 and still above it at step 102" in verdict.reason


def test_one_batch_above_divergence_factor_is_a_spike_not_a_divergence():
    losses = decline()
    losses[100] = 4.01 * losses[0]  # jumps and falls back at the next batch
    verdict = judge(losses, DETECT)
    assert verdict.status is TrialStatus.UNSTABLE and verdict.diverged_step is None
    assert "a spike to 9.223 at step 101" in verdict.reason
    assert judge(losses, DetectConfig(divergence_patience=0)).diverged_step == 101  # the old rule, on request


def test_divergence_factor_is_configurable():
    losses = decline()
    losses[100:102] = 3.0 * losses[0]
    assert judge(losses, DETECT).status is not TrialStatus.DIVERGED
    assert judge(losses, DetectConfig(divergence_factor=2.5)).status is TrialStatus.DIVERGED


def test_divergence_step_honours_chunk_offset():
    chunk = np.array([1.0, 1.0, math.nan])
    assert divergence_step(chunk, levels=1.0, factor=4.0, offset=64) == 67
    assert divergence_step(np.ones(5), 1.0, 4.0) is None


def test_flat_at_initial_loss_learned_nothing():
    verdict = judge(np.full(STEPS, 2.3) + 0.01 * np.sin(np.arange(STEPS)), DETECT)
    assert verdict.status is TrialStatus.LEARNED_NOTHING


def test_stuck_at_chance_learned_nothing_even_after_a_big_drop():
    # starts far above ln 10 (a badly scaled init), falls to the uniform guess and stays there
    losses = np.concatenate([decline(9.0, math.log(10), 100), np.full(300, math.log(10))])
    verdict = judge(losses, DETECT, num_classes=10)
    assert verdict.status is TrialStatus.LEARNED_NOTHING
    assert "at chance level ln 10" in verdict.reason
    assert judge(losses, DETECT, num_classes=None).status is TrialStatus.OK


def test_a_loss_still_far_above_chance_is_said_to_be_above_it():
    losses = decline(9.0, 7.5, 400)  # fell 17%, but a guess would do better
    verdict = judge(losses, DETECT, num_classes=50)
    assert verdict.status is TrialStatus.LEARNED_NOTHING
    assert "above chance level ln 50" in verdict.reason


def test_early_spike_that_recovers_is_unstable():
    losses = decline()
    losses[5:9] = [3.0, 5.5, 4.0, 2.5]  # > 2 × 2.3 early, < 4 × 2.3, then back on track
    verdict = judge(losses, DETECT)
    assert verdict.status is TrialStatus.UNSTABLE
    assert verdict.reason.startswith("early instability") and "step 7" in verdict.reason


def test_late_blip_is_ok_but_a_late_spike_is_mid_training_instability():
    losses = decline()
    losses[300] = 0.7  # a noisy batch at 2.5x the current loss: the smoothed curve barely moves
    assert judge(losses, DETECT).status is TrialStatus.OK
    losses[300] = 5.5  # 20x the current loss: the smoothed curve gives back a quarter of the progress
    verdict = judge(losses, DETECT)
    assert verdict.status is TrialStatus.UNSTABLE and verdict.reason.startswith("mid-training")


def test_rise_after_steady_decline_is_unstable():
    down = decline(2.3, 0.3, 200)
    up = np.linspace(0.3, 1.2, 200)  # gives back (1.2 - 0.3) / (2.3 - 0.3) = 45% of the progress
    verdict = judge(np.concatenate([down, up]), DETECT)
    assert verdict.status is TrialStatus.UNSTABLE
    assert verdict.reason.startswith("mid-training instability")


def test_small_rise_below_rise_fraction_is_ok():
    down = decline(2.3, 0.3, 200)
    up = np.linspace(0.3, 0.6, 200)  # 15% of the progress < 25%
    assert judge(np.concatenate([down, up]), DETECT).status is TrialStatus.OK
    assert judge(np.concatenate([down, up]), DetectConfig(rise_fraction=0.1)).status is TrialStatus.UNSTABLE


def test_empty_curve_is_failed():
    assert judge(np.array([]), DETECT).status is TrialStatus.FAILED


def test_a_lucky_low_first_batch_is_not_the_level_training_starts_from():
    """Batches of four noisy regression targets: the first batch's loss a tenth of the next
    ones'. The initial level is the median of the first three, so nothing diverges at step 2."""
    rng = np.random.default_rng(0)
    losses = 0.45 * (0.25 / 0.45) ** (np.arange(300) / 299) * rng.gamma(4, 0.25, 300)
    losses[:3] = [0.11, 0.52, 1.03]
    verdict = judge(losses, DETECT)
    assert verdict.status is TrialStatus.OK, verdict.reason
    assert "loss fell 0.44" in verdict.reason  # from the level (the median 0.52, at most 4 × 0.11), not 0.11


def test_an_explosion_in_the_first_steps_still_diverges_at_once():
    """A rate that explodes cannot drag the level up with it: at most divergence_factor × the first loss."""
    losses = np.concatenate([[2.3, 110.4, 313.1, 403.9, 116.1, 30.5], np.full(100, 2.3)])
    verdict = judge(losses, DETECT)
    assert verdict.status is TrialStatus.DIVERGED and verdict.diverged_step == 2


def test_an_engine_chunk_reads_the_same_levels_as_the_whole_curve():
    from stabsweep.analysis.rules import initial_levels, levels_between

    losses = np.array([[0.11, 0.52, 1.03, 0.9, 0.5, 0.4], [2.3, 110.0, 313.0, 404.0, 116.0, 30.0]])
    whole = initial_levels(losses, 4.0)
    for start, end in [(0, 1), (0, 6), (1, 3), (2, 6), (4, 6)]:
        np.testing.assert_array_equal(levels_between(losses, start, end, 4.0), whole[:, start:end])


def test_batches_above_the_bar_again_and_again_are_instability_not_a_spike():
    """Once is a batch; twice is the training (the examples/outside workload at lr 3 reaches 6×
    its initial loss at steps 13 and 33 and falls back each time)."""
    losses = decline()
    losses[150] = 5 * losses[0]
    assert judge(losses, DETECT).spike_step == 151  # one: a spike, reported
    losses[250] = 5 * losses[0]
    verdict = judge(losses, DETECT)
    assert verdict.status is TrialStatus.UNSTABLE and verdict.step == 151
    assert "2 batches spiked above 4 × initial (at steps 151, 251)" in verdict.reason
