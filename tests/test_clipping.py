"""Clipping: the threshold report, the scaling on known vectors, the adaptive rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from stabsweep.analysis.clip import norm_report
from stabsweep.config.schema import ClipConfig
from stabsweep.training.clipping import FixedClip, PercentileClip, ZScoreClip, build_clipper

CPU = torch.device("cpu")


def test_threshold_is_numpys_percentile_of_exactly_the_norms_read():
    norms = np.random.default_rng(0).lognormal(size=997)
    report = norm_report(norms, percentile=90)
    assert report.threshold == np.percentile(norms, 90)
    assert report.percentiles["p50"] == np.percentile(norms, 50) and report.percentiles["max"] == norms.max()
    assert report.clipped_fraction == pytest.approx(np.mean(norms > np.percentile(norms, 90)), abs=1e-6)
    assert report.steps_read == 997 and not report.aggressive


def test_non_finite_norms_are_left_out_and_counted():
    report = norm_report(np.array([1.0, 2.0, 3.0, math.nan, math.inf]), percentile=50)
    assert report.threshold == 2.0 and report.steps_read == 3 and report.non_finite_dropped == 2


def test_aggressive_when_the_threshold_is_below_most_early_norms():
    """The report's share of clipped steps is 1 − p/100 by construction; the early steps tell."""
    falling = np.arange(100, 0, -1, dtype=float)  # the largest norms first, as at the start of training
    assert norm_report(falling, percentile=90).aggressive  # p90 is below all of the first 10 norms
    assert norm_report(falling, percentile=90).clipped_fraction == pytest.approx(0.1)
    rising = falling[::-1]
    assert not norm_report(rising, percentile=40).aggressive  # clips 60% of steps, but none of the first
    assert norm_report(rising, percentile=5, early_fraction=0.1, aggressive_fraction=0.3).aggressive


def test_clip_scales_to_threshold_only_when_above():
    # g = (3, 4): norm 5. Clipping at 2.5 halves it; at 10 leaves it alone.
    for threshold, expected in ((2.5, [1.5, 2.0]), (10.0, [3.0, 4.0])):
        p = torch.nn.Parameter(torch.zeros(2))
        p.grad = torch.tensor([3.0, 4.0])
        norm = get_total_norm([p.grad])
        assert norm.item() == pytest.approx(5.0)
        clip_grads_with_norm_([p], rule(threshold=threshold).threshold(norm.reshape(1), 0)[0], norm)
        torch.testing.assert_close(p.grad, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_global_norm_spans_all_parameters():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
    norm = get_total_norm([a.grad, b.grad])
    clip_grads_with_norm_([a, b], 1.0, norm)
    assert math.hypot(a.grad.item(), b.grad.item()) == pytest.approx(1.0, rel=1e-5)


def rule(**settings):
    """The rule for one trial (a batch of one) with these ClipConfig settings."""
    return build_clipper([ClipConfig(**settings)], CPU)


def thresholds(clipper, norms):
    return [float(clipper.threshold(torch.tensor([n]), step)[0]) for step, n in enumerate(norms)]


def test_percentile_rule_on_steady_and_spiky_norms():
    clipper = rule(percentile=50, window=4)
    got = thresholds(clipper, [1.0, 3.0, 2.0, 100.0, 4.0, 5.0])
    # the current norm joins the window before the percentile is taken; the window keeps the last 4
    assert got == pytest.approx([1.0, 2.0, 2.0, 2.5, 3.5, 4.5])


def test_percentile_rule_follows_drift():
    clipper = rule(percentile=90, window=50)
    got = thresholds(clipper, np.linspace(1, 10, 200))
    assert got[-1] == pytest.approx(np.percentile(np.linspace(1, 10, 200)[-50:], 90), rel=1e-5)


def test_zscore_rule_steady_spike_and_drift():
    rng = np.random.default_rng(0)
    steady = 1.0 + 0.05 * rng.standard_normal(200)
    clipper = rule(zscore=3.0, ema_decay=0.9, warmup=20)
    got = thresholds(clipper, [*steady, 50.0, *steady[:20]])
    assert all(math.isinf(t) for t in got[:20])  # warm-up: observe only
    assert 1.05 < got[200] < 1.5  # the bar before the spike: mean + 3 std of a steady norm
    assert got[200] < 50.0  # the spike would be clipped
    assert got[201] < 2.0  # the clipped spike barely moves the statistics
    drifting = rule(zscore=3.0, ema_decay=0.9, warmup=5)
    bars = thresholds(drifting, np.linspace(1, 5, 300))
    assert bars[-1] > 4.5  # the bar follows a slow drift instead of clipping everything


def test_zscore_ignores_non_finite_norms():
    clipper = rule(zscore=2.0, ema_decay=0.9, warmup=0)
    thresholds(clipper, [1.0, 1.1, 0.9])
    before = clipper.mean.item()
    clipper.threshold(torch.tensor([math.nan]), 3)
    assert clipper.mean.item() == before


def test_build_clipper():
    assert build_clipper([None, None], CPU) is None
    assert isinstance(build_clipper([None, ClipConfig(threshold=1.0)], CPU), FixedClip)
    assert isinstance(build_clipper([ClipConfig(percentile=90)], CPU), PercentileClip)
    assert isinstance(build_clipper([ClipConfig(zscore=2.5)], CPU), ZScoreClip)
    with pytest.raises(ValueError, match="cannot mix"):
        build_clipper([ClipConfig(threshold=1.0), ClipConfig(zscore=2.5)], CPU)


def test_batched_rules_match_each_trial_alone():
    """A batch of trials with different settings gives each the threshold it gets alone."""
    norms = np.random.default_rng(1).lognormal(size=(60, 3))
    for settings in (
        [{"threshold": 1.0}, None, {"threshold": 2.5}],
        [{"percentile": 50, "window": 4}, {"percentile": 90, "window": 10}, {"percentile": 90, "window": 50}],
        [{"zscore": 2.0, "warmup": 5}, {"zscore": 3.0, "ema_decay": 0.9}, {"zscore": 1.0, "warmup": 0}],
    ):
        configs = [ClipConfig(**s) if s else None for s in settings]
        batch = build_clipper(configs, CPU)
        got = np.array([batch.threshold(torch.tensor(n, dtype=torch.float32), i).numpy() for i, n in enumerate(norms)])
        for j, config in enumerate(configs):
            want = thresholds(build_clipper([config], CPU), norms[:, j]) if config else [math.inf] * len(norms)
            np.testing.assert_allclose(got[:, j], want, rtol=1e-6)


def test_compaction_keeps_the_remaining_trials_state():
    configs = [ClipConfig(zscore=2.0, warmup=0), ClipConfig(zscore=3.0, warmup=0)]
    batch, alone = build_clipper(configs, CPU), build_clipper(configs[1:], CPU)
    norms = np.random.default_rng(2).lognormal(size=20)
    for step, n in enumerate(norms[:10]):
        batch.threshold(torch.tensor([n, n], dtype=torch.float32), step)
        alone.threshold(torch.tensor([n], dtype=torch.float32), step)
    batch.keep(torch.tensor([1]))
    for step, n in enumerate(norms[10:], start=10):
        got = batch.threshold(torch.tensor([n], dtype=torch.float32), step)
        assert got.item() == pytest.approx(alone.threshold(torch.tensor([n], dtype=torch.float32), step).item())
