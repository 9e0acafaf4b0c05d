"""``stabsweep warmup``: the plan rules, the pick rule, --from and its errors, end to end."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from stabsweep.analysis.warmup import WarmupPick, picks, verdict
from stabsweep.cli import app
from stabsweep.config import load_config
from stabsweep.procedures.warmup import plan

from .conftest import MINIMAL

runner = CliRunner()


def test_plan_rules(write_config):
    config = load_config(
        write_config(MINIMAL + "warmup_sweep: {multipliers: [10, 100], warmup_steps: [1, 3, 4, 10]}\n")
    )
    the_plan = plan(config, unstable_base_lr=0.02)  # train.steps = 30: cap at 3
    assert the_plan.base_lrs == [0.2, 2.0]
    assert the_plan.warmup_steps == [1, 3] and the_plan.dropped == [4, 10]
    rows = [
        (s.columns["base_lr"], s.columns["warmup_steps"], s.columns["post_warmup_steps"], s.steps, s.lr)
        for s in the_plan.probes
    ]
    assert rows == [
        (0.2, 0, 9, 9, 0.2),
        (0.2, 1, 2, 3, 0.2),
        (0.2, 3, 6, 9, 0.2),  # baseline as long as the longest probe
        (2.0, 0, 9, 9, 2.0),
        (2.0, 1, 2, 3, 2.0),
        (2.0, 3, 6, 9, 2.0),
    ]
    assert all(s.schedule.name == "constant" and s.warmup_steps == s.columns["warmup_steps"] for s in the_plan.probes)


def test_plan_with_every_candidate_too_long_is_a_user_error(write_config):
    from stabsweep.errors import UserError

    config = load_config(write_config(MINIMAL + "warmup_sweep: {warmup_steps: [10, 100]}\n"))
    with pytest.raises(UserError, match=r"above 10% of train\.steps=30"):
        plan(config, 0.1)


def probes(rows, seeds=None):
    """(base_lr, warmup_steps, status) rows of probes, optionally with seeds."""
    return pd.DataFrame(
        [
            {
                "trial_id": i,
                "phase": "probe",
                "base_lr": b,
                "warmup_steps": w,
                "status": st,
                "seed": (seeds or [0] * len(rows))[i],
            }
            for i, (b, w, st) in enumerate(rows)
        ]
    )


def test_the_pick_is_the_shortest_warmup_after_which_every_longer_one_works():
    found = picks(
        probes(
            [
                *[(1.0, 0, "diverged"), (1.0, 10, "ok"), (1.0, 30, "diverged"), (1.0, 100, "ok"), (1.0, 300, "ok")],
                *[
                    (10.0, 0, "diverged"),
                    (10.0, 10, "diverged"),
                    (10.0, 100, "learned_nothing"),
                    (10.0, 300, "unstable"),
                ],
            ]
        )
    )
    assert found[1.0].recommended == 100 and found[1.0].candidates == [100, 300]
    assert found[1.0].lucky == [10]  # ok between failures: luck, not a recommendation
    assert found[10.0].recommended is None and not found[10.0].baseline_ok


def test_a_warmup_works_only_when_every_seed_is_ok():
    found = picks(
        probes([(1.0, 0, "diverged"), (1.0, 0, "diverged"), (1.0, 10, "ok"), (1.0, 10, "unstable")], [0, 1, 0, 1])
    )
    assert found[1.0].working == [] and found[1.0].recommended is None


def test_when_the_baseline_is_ok_the_verdict_says_no_warmup_is_needed():
    found = picks(probes([(1.0, 0, "ok"), (1.0, 10, "ok"), (1.0, 100, "ok")]))
    assert found[1.0].baseline_ok
    text = verdict(found[1.0], 0.1, [], [10.0])
    assert "trains stably without any warmup: no warmup is needed at this rate" in text
    assert "--multiplier 100" in text and "A warmup of" not in text


@pytest.mark.slow
def test_from_run_end_to_end(smoke_config, tmp_path):
    assert runner.invoke(app, ["lr", str(smoke_config), "--out", str(tmp_path), "-q"]).exit_code == 0
    lr_summary = json.loads((tmp_path / "lr" / "summary.json").read_text())
    result = runner.invoke(app, ["warmup", "--from", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["unstable_base_lr"] == lr_summary["unstable_base_lr"]
    trials = pd.read_csv(tmp_path / "warmup" / "trials.csv")
    assert trials["base_lr"].tolist() == pytest.approx([10 * lr_summary["unstable_base_lr"]] * len(trials))
    assert sorted(trials["warmup_steps"]) == [0, 2, 5]  # smoke: [2, 5, 10] minus 10 > 10% of 60 steps
    ok = trials[(trials["status"] == "ok") & (trials["warmup_steps"] > 0)]
    assert summary["recommended_warmup_steps"] == (int(ok["warmup_steps"].min()) if len(ok) else None)
    for name in ("warmup_sweep.png", "base_rate.png", "probe_curves.png"):
        assert (tmp_path / "warmup" / "plots" / name).exists()


def warmup_args(smoke_config, tmp_path, unstable):
    return [
        "warmup",
        str(smoke_config),
        "--unstable-lr",
        str(unstable),
        "--out",
        str(tmp_path),
        "--set",
        "train.steps=200",
        "--set",
        "warmup_sweep.warmup_steps=[5, 10, 20]",
        "--json",
    ]


@pytest.mark.slow
def test_a_rate_that_trains_without_warmup_needs_none(smoke_config, tmp_path):
    result = runner.invoke(app, warmup_args(smoke_config, tmp_path, 0.01))  # 10 × 0.01 trains on its own
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    trials = pd.read_csv(tmp_path / "warmup" / "trials.csv")
    assert trials.loc[trials["warmup_steps"] == 0, "status"].tolist() == ["ok"]
    assert summary["baseline_ok"] and summary["recommended_warmup_steps"] == 0
    assert "no warmup is needed at this rate" in summary["verdict"] and summary["confirms"] == []
    assert "confirm" not in set(trials["phase"])


@pytest.mark.slow
def test_when_a_confirm_run_does_not_hold_the_next_longer_warmup_is_confirmed(smoke_config, tmp_path, monkeypatch):
    from stabsweep.analysis import warmup as rules
    from stabsweep.procedures import warmup as procedure

    pick = WarmupPick(0.1, False, [5, 10, 20], [10, 20], [5])
    monkeypatch.setattr(procedure, "picks", lambda trials: {0.1: pick})
    calls = []

    def holds_second_time(trials, specs):
        calls.append([s.warmup_steps for s in specs])
        return len(calls) == 2

    monkeypatch.setattr(rules, "confirm_holds", holds_second_time)
    result = runner.invoke(app, warmup_args(smoke_config, tmp_path, 0.01))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert calls == [[10], [20]]
    trials = pd.read_csv(tmp_path / "warmup" / "trials.csv")
    confirms = trials[trials["phase"] == "confirm"].sort_values("trial_id")
    assert confirms["warmup_steps"].tolist() == [10, 20] and confirms["steps_run"].max() <= 220
    steps = pd.read_csv(tmp_path / "warmup" / "steps.csv")
    lrs = steps[steps["trial_id"] == confirms["trial_id"].iloc[0]]["lr"].to_numpy()
    assert lrs[:3] == pytest.approx([0.01, 0.02, 0.03])  # the ramp to 0.1 over 10 steps, then the schedule
    assert summary["recommended_warmup_steps"] == 20
    assert "The full-length run with 10 steps did not hold" in summary["verdict"]
    assert "A warmup of 5 steps was ok while a longer one failed: luck" in summary["verdict"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "exactly one of --from"),
        (["--from", "{tmp}/nowhere"], "run folder not found"),
        (["--from", "{tmp}"], "summary.json: not found"),
        (["--unstable-lr", "0.1"], "needs a CONFIG"),
        (["{smoke}", "--unstable-lr", "-1"], "positive"),
    ],
)
def test_input_errors_exit_2(smoke_config, tmp_path, args, expected):
    args = [a.format(tmp=tmp_path, smoke=smoke_config) for a in args]
    result = runner.invoke(app, ["warmup", *args])
    assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output


def test_run_without_unstable_rate_says_extend_the_grid(tmp_path):
    (tmp_path / "lr").mkdir()
    (tmp_path / "lr" / "summary.json").write_text(
        json.dumps(
            {"command": "lr", "best_lr": 0.1, "unstable_base_lr": None, "next_command": "stabsweep lr x.yaml --set ..."}
        )
    )
    result = runner.invoke(app, ["warmup", "--from", str(tmp_path)])
    assert result.exit_code == 2 and "found no unstable rate" in result.output and "extend the lr grid" in result.output


def confirm(warmup, status, holds):
    return {
        "warmup_steps": warmup,
        "status": status,
        "reason": "r",
        "holds": holds,
        "best_eval_loss": 1.0,
        "comparison": "better than",
        "lr_star_best_eval_loss": 1.2,
        "lr_star": 0.01,
    }


def test_the_verdict_names_the_confirm_that_held_and_the_one_that_did_not():
    pick = WarmupPick(0.1, False, [10, 30], [10, 30], [])
    text = verdict(pick, 0.01, [confirm(10, "unstable", False), confirm(30, "ok", True)], [10.0])
    assert text.startswith("A warmup of 30 steps makes lr=0.1 (10× the unstable rate 0.01) train stably.")
    assert "The full-length run with 10 steps did not hold: unstable" in text and "trained better than" in text
    text = verdict(pick, 0.01, [confirm(10, "diverged", False), confirm(30, "unstable", False)], [10.0])
    assert "no full-length run with warmup held: 10 (diverged: r), 30 (unstable: r)" in text
    assert verdict(WarmupPick(0.1, False), 0.01, [], [10.0]).startswith("No warmup in the grid")
