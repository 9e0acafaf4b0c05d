"""``stabsweep warmup``: the plan rules, the pick rule, --from and its errors, end to end."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from stabsweep.cli import app
from stabsweep.config import load_config
from stabsweep.procedures.warmup import pick, plan

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


def test_pick_is_the_shortest_ok_warmup_and_none_when_none_works():
    trials = pd.DataFrame(
        {
            "phase": ["probe"] * 8,
            "base_lr": [1.0] * 4 + [10.0] * 4,
            "warmup_steps": [0, 10, 100, 1000] * 2,
            "status": ["ok", "unstable", "ok", "ok", "diverged", "diverged", "learned_nothing", "unstable"],
        }
    )
    assert pick(trials) == {1.0: 100, 10.0: None}  # a working baseline is not a warmup


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


@pytest.mark.slow
def test_pick_and_confirm(smoke_config, tmp_path):
    # pretend 0.01 was unstable: at 10× = 0.1 a 5-step warmup learns too little in its 15 steps,
    # a 10-step one trains: it is picked, then confirmed on the full schedule
    result = runner.invoke(
        app,
        [
            "warmup",
            str(smoke_config),
            "--unstable-lr",
            "0.01",
            "--out",
            str(tmp_path),
            "--set",
            "train.steps=200",
            "--set",
            "warmup_sweep.warmup_steps=[5, 10, 20]",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    trials = pd.read_csv(tmp_path / "warmup" / "trials.csv")
    probes = trials[(trials["phase"] == "probe") & (trials["warmup_steps"] > 0)]
    assert summary["base_lr"] == pytest.approx(0.1)
    assert summary["recommended_warmup_steps"] == probes[probes["status"] == "ok"]["warmup_steps"].min() == 10
    confirm = trials[trials["phase"] == "confirm"].iloc[0]
    assert confirm["warmup_steps"] == 10 and confirm["steps_run"] == 200 + 10
    steps = pd.read_csv(tmp_path / "warmup" / "steps.csv")
    lrs = steps[steps["trial_id"] == confirm["trial_id"]]["lr"].to_numpy()
    assert lrs[:3] == pytest.approx([0.01, 0.02, 0.03]) and lrs[9:] == pytest.approx([0.1] * 201)
    assert summary["confirm"]["status"] == confirm["status"]
    assert "A warmup of 10 steps makes lr=0.1" in summary["verdict"]


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


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("ok", "trained better than"),
        ("unstable", "confirm run was unstable later on"),
        ("diverged", "But the full-length confirm run was diverged"),
    ],
)
def test_verdict_names_the_confirm_outcome(status, expected):
    from stabsweep.procedures.warmup import verdict

    confirm = {
        "status": status,
        "reason": "r",
        "best_eval_loss": 1.0,
        "comparison": "better than",
        "lr_star_best_eval_loss": 1.2,
        "lr_star": 0.01,
    }
    text = verdict(0.1, 0.01, 10, confirm)
    assert text.startswith("A warmup of 10 steps makes lr=0.1") and expected in text
    assert verdict(0.1, 0.01, None, None).startswith("No warmup in the grid")
