"""Every schedule of docs/contract.md ("Config") against its formula at start, end of warmup, mid and end."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stabsweep.optim.schedules import SCHEDULES, check_schedule, lr_table

BASE, STEPS = 0.5, 100


def at(name, steps=STEPS, prepend_warmup=0, **kwargs):
    return lr_table(name, kwargs, BASE, steps, prepend_warmup=prepend_warmup)


def test_constant():
    np.testing.assert_allclose(at("constant"), BASE)


@pytest.mark.parametrize("after", ["constant", "cosine", "linear"])
def test_linear_warmup_then(after):
    w = 10
    table = at("warmup", warmup_steps=w, after=after)
    # ramp from 0: step t (0-based) uses base · (t + 1) / w
    np.testing.assert_allclose(table[:w], BASE * np.arange(1, w + 1) / w)
    assert table[w] == pytest.approx(BASE)  # the tail starts at the peak
    rest = STEPS - w
    mid = w + (rest - 1) // 2
    expected_mid = {
        "constant": BASE,
        "cosine": BASE * (1 + math.cos(math.pi * ((rest - 1) // 2) / (rest - 1))) / 2,
        "linear": BASE * (1 - ((rest - 1) // 2) / (rest - 1)),
    }[after]
    assert table[mid] == pytest.approx(expected_mid, rel=1e-6)
    assert table[-1] == pytest.approx(BASE if after == "constant" else 0.0, abs=1e-9)


def test_cosine_and_linear_decay():
    cosine, linear = at("cosine"), at("linear")
    t = np.arange(STEPS)
    np.testing.assert_allclose(cosine, BASE * (1 + np.cos(np.pi * t / (STEPS - 1))) / 2, atol=1e-9)
    np.testing.assert_allclose(linear, BASE * (1 - t / (STEPS - 1)), atol=1e-9)


def test_cosine_min_factor():
    assert at("cosine", min_factor=0.1)[-1] == pytest.approx(0.1 * BASE)


def test_inverse_sqrt():
    w = 16
    table = at("inverse_sqrt", warmup_steps=w)
    t = np.arange(STEPS)
    np.testing.assert_allclose(table, BASE * np.minimum((t + 1) / w, np.sqrt(w / (t + 1))))
    assert table[w - 1] == pytest.approx(BASE) and table[4 * w - 1] == pytest.approx(BASE / 2)


def test_sgdr_restarts():
    table = at("sgdr", period=25)
    assert table[0] == table[25] == table[50] == pytest.approx(BASE)
    assert table[12] == pytest.approx(BASE * (1 + math.cos(math.pi * 12 / 25)) / 2)


@pytest.mark.parametrize("mode", ["triangular", "triangular2"])
def test_cyclic(mode):
    table = at("cyclic", mode=mode, step_size_up=10, min_factor=0.1)
    low = 0.1 * BASE
    assert table[0] == pytest.approx(low) and table[10] == pytest.approx(BASE)
    assert table[5] == pytest.approx((low + BASE) / 2)
    second_peak = BASE if mode == "triangular" else low + (BASE - low) / 2
    assert table[30] == pytest.approx(second_peak)


def test_one_cycle():
    table = at("one_cycle", pct_start=0.3, div_factor=25, final_div_factor=1e4)
    assert table[0] == pytest.approx(BASE / 25)
    assert table.max() == pytest.approx(BASE) and int(table.argmax()) in (29, 30)
    assert table[-1] == pytest.approx(BASE / 25 / 1e4)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_prepended_warmup_ramps_then_runs_the_schedule(name):
    w = 8
    plain = at(name)
    warmed = at(name, prepend_warmup=w)
    assert len(warmed) == STEPS + w  # total steps become train.steps + warmup_steps
    np.testing.assert_allclose(warmed[:w], plain[0] * np.arange(1, w + 1) / w, rtol=1e-6)
    np.testing.assert_allclose(warmed[w:], plain, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    ("name", "kwargs", "key", "match"),
    [
        ("cosin", {}, None, "did you mean 'cosine'"),
        ("warmup", {"after": "exp"}, "after", "'constant', 'cosine' or 'linear'"),
        ("cosine", {"warmup_steps": 3}, "warmup_steps", "no argument"),
        ("cyclic", {"mode": "exp"}, "mode", "triangular"),
        ("warmup", {"warmup_steps": -3}, "warmup_steps", "greater than or equal to 1"),
        ("warmup", {"warmup_steps": True}, "warmup_steps", "not true"),
        ("one_cycle", {"pct_start": float("nan")}, "pct_start", "finite"),
        ("sgdr", {"period": 2.5}, "period", "integer"),
    ],
)
def test_bad_schedules_name_the_argument(name, kwargs, key, match):
    with pytest.raises(ValueError, match=match) as info:
        check_schedule(name, kwargs)
    assert getattr(info.value, "key", None) == key
