"""The detection rules against batch noise (issue: noise is not instability): a falling curve
plus noise of any size is ``ok``; a rise, spike or divergence planted in the same noise is
still caught. Hypothesis draws the curve's length, the noise's size and kind, and the seed.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stabsweep.analysis.rules import judge
from stabsweep.config.schema import DetectConfig
from stabsweep.records import TrialStatus

DETECT = DetectConfig()


def falling(steps: int, noise: float, kind: str, seed: int, start: float = 2.3, end: float = 0.4) -> np.ndarray:
    """A loss falling from ``start`` to ``end``, each batch's loss a noisy sample of it: the
    trend times (1 + noise·ε), ε Gaussian or Student-t with 5 degrees of freedom, or the trend
    times a lognormal factor. The first batch is the untrained model's, at the trend (as a
    classifier's loss at init sits at ln C whatever the batch). Batch losses stay positive and
    below the divergence bar (4 × the initial loss): what lies above it is divergence."""
    rng = np.random.default_rng(seed)
    trend = start * (end / start) ** (np.arange(steps) / (steps - 1))
    if kind == "gauss":
        losses = trend * (1 + noise * rng.standard_normal(steps))
    elif kind == "t5":
        losses = trend * (1 + noise * rng.standard_t(5, steps))
    else:
        losses = trend * np.exp(noise * rng.standard_normal(steps) - noise**2 / 2)
    losses = np.clip(losses, 1e-3, 3.9 * start)
    losses[0] = start
    return losses


curves = st.tuples(
    st.integers(100, 3000),  # steps
    st.floats(0.0, 0.6),  # noise, relative to the loss: from none to batches of a few examples
    st.sampled_from(["gauss", "t5", "lognormal"]),
    st.integers(0, 2**31 - 1),
)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(curves)
def test_a_falling_curve_with_noise_of_any_size_is_ok(curve):
    losses = falling(*curve)
    verdict = judge(losses, DETECT)
    assert verdict.status is TrialStatus.OK, verdict.reason


# A rise can be told from noise only when it is larger than the noise of the trend it moves:
# the planted ones are, for curves long enough and batches not too noisy.
planted = st.tuples(
    st.integers(300, 3000),
    st.floats(0.0, 0.2),
    st.sampled_from(["gauss", "t5", "lognormal"]),
    st.integers(0, 2**31 - 1),
)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(planted)
def test_a_sustained_rise_in_the_same_noise_is_caught(curve):
    steps = curve[0]
    losses = falling(*curve)
    rise, top = steps // 3, 2 * steps // 3
    trend = 2.3 * (0.4 / 2.3) ** (np.arange(steps) / (steps - 1))
    # Over the middle third the loss climbs back, giving back 45% of the progress, and stays there.
    level = trend[rise]
    target = level + 0.45 * (2.3 - level)
    shape = np.concatenate([np.linspace(level, target, top - rise), np.full(steps - top, target)])
    losses[rise:] *= shape / trend[rise:]
    verdict = judge(np.clip(losses, 1e-3, 3.9 * 2.3), DETECT)
    assert verdict.status is TrialStatus.UNSTABLE, verdict.reason
    assert "instability" in verdict.reason


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(curves)
def test_a_divergence_in_the_same_noise_is_caught(curve):
    steps, *_ = curve
    losses = falling(*curve)
    at = steps // 3
    losses[at:] = np.nan  # the loss turns NaN and stays there
    verdict = judge(losses, DETECT)
    assert verdict.status is TrialStatus.DIVERGED and verdict.diverged_step == at + 1


def test_a_spike_on_a_clean_curve_is_caught_but_not_one_heavy_batch_among_many():
    clean = falling(400, 0.0, "gauss", 0)
    clean[300] = 20 * clean[300]
    assert judge(clean, DETECT).status is TrialStatus.UNSTABLE
    noisy = falling(400, 0.5, "t5", 3)  # heavy batches everywhere: the largest is one of many
    assert judge(noisy, DETECT).status is TrialStatus.OK


def test_the_early_spike_needs_to_stand_out_of_the_noise():
    losses = falling(400, 0.0, "gauss", 0)
    losses[6] = 2.2 * losses[0]  # one batch above 2 × initial, on a clean curve: an early instability
    verdict = judge(losses, DETECT)
    assert verdict.status is TrialStatus.UNSTABLE and verdict.reason.startswith("early instability")
    assert verdict.step == 7
