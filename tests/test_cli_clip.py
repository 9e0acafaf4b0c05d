"""``stabsweep clip-report``: source selection, report against steps.csv, --sweep, errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from stabsweep.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def lr_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    smoke = __import__("tests.conftest", fromlist=["CONFIGS"]).CONFIGS / "smoke.yaml"
    result = runner.invoke(app, ["lr", str(smoke), "--out", str(root), "-q"])
    assert result.exit_code == 0, result.output
    return root


def clip_report(*args):
    result = runner.invoke(app, ["clip-report", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.slow
def test_report_recomputes_from_the_steps_it_read(lr_run, tmp_path):
    summary = clip_report(lr_run, "--out", tmp_path)
    lr_summary = json.loads((lr_run / "lr" / "summary.json").read_text())
    assert summary["source"]["trial_ids"] == [lr_summary["unstable_trial_id"]]  # default: the unstable rate's
    steps = pd.read_csv(lr_run / "lr" / "steps.csv")
    norms = steps[steps["trial_id"] == lr_summary["unstable_trial_id"]]["grad_norm"].to_numpy()
    norms = norms[np.isfinite(norms)]
    assert summary["threshold"] == pytest.approx(np.percentile(norms, 90))
    assert summary["clipped_fraction"] == pytest.approx(np.mean(norms > summary["threshold"]), abs=1e-6)
    early = norms[: int(np.ceil(0.1 * len(norms)))]
    assert summary["early_clipped_fraction"] == pytest.approx(np.mean(early > summary["threshold"]), abs=1e-6)
    assert summary["aggressive"] is (summary["early_clipped_fraction"] > 0.5)
    assert summary["source"]["steps_read"] == len(norms)
    assert set(summary["percentiles"]) == {"p50", "p75", "p90", "p95", "p99", "max"}
    assert summary["percentile"] == 90 and "of those logged steps" in summary["verdict"]
    for name in ("summary.json", "plots/grad_norm.png", "plots/grad_norm_hist.png"):
        assert (tmp_path / "clip" / name).exists()


@pytest.mark.slow
def test_trial_and_percentile_options(lr_run, tmp_path):
    summary = clip_report(lr_run, "--trial", 0, "--percentile", 50, "--out", tmp_path)
    steps = pd.read_csv(lr_run / "lr" / "steps.csv")
    norms = steps[steps["trial_id"] == 0]["grad_norm"].to_numpy()
    assert summary["source"]["trial_ids"] == [0] and summary["threshold"] == pytest.approx(np.median(norms))


@pytest.mark.slow
def test_sweep_reports_what_it_wrote(lr_run, tmp_path):
    summary = clip_report(lr_run, "--sweep", "--out", tmp_path)
    trials = pd.read_csv(tmp_path / "clip" / "trials.csv")
    assert len(trials) == 1 + 4  # unclipped baseline + clip_sweep.percentiles
    lr_summary = json.loads((lr_run / "lr" / "summary.json").read_text())
    assert trials["lr"].tolist() == pytest.approx([lr_summary["unstable_base_lr"]] * 5)
    baseline = trials.iloc[0]
    steps = pd.read_csv(tmp_path / "clip" / "steps.csv")
    ordered = trials.sort_values("clip_threshold", na_position="first")
    for row, reported in zip(ordered.itertuples(), summary["sweep"], strict=True):
        assert reported["status"] == row.status
        if row.phase == "clip":  # every clipped trial's own share of clipped steps, in trials.csv
            own = steps.loc[steps["trial_id"] == row.trial_id, "clipped"].mean()
            assert row.clipped_fraction == pytest.approx(own, abs=1e-6) == reported["clipped_fraction"]
            assert reported["aggressive"] == (own > 0.5)
        assert reported["rescued"] == (
            row.phase == "clip"
            and baseline["status"] in ("diverged", "unstable")
            and row.status == "ok"
            and not reported["aggressive"]
        )
    rescued = [r for r in summary["sweep"] if r["rescued"]]
    expected = max(rescued, key=lambda r: r["clip_threshold"])["clip_threshold"] if rescued else None
    assert summary["recommended_threshold"] == expected
    clipped_trial = steps[steps["trial_id"] == 1]
    np.testing.assert_allclose(clipped_trial["clip_threshold"], trials.iloc[1]["clip_threshold"], rtol=1e-6)
    assert (clipped_trial["clipped"] == (clipped_trial["grad_norm"] > clipped_trial["clip_threshold"])).all()


@pytest.mark.slow
def test_config_source_trains_one_unclipped_trial(smoke_config, tmp_path):
    summary = clip_report(smoke_config, "--lr", 0.1, "--out", tmp_path)
    assert summary["source"]["kind"] == "config" and summary["source"]["lr"] == 0.1
    steps = pd.read_csv(tmp_path / "clip" / "steps.csv")
    assert summary["threshold"] == pytest.approx(np.percentile(steps["grad_norm"], 90))
    assert not steps["clipped"].any()


@pytest.mark.slow
def test_adaptive_clipping_in_training_records_the_threshold_in_force(smoke_config, tmp_path):
    result = runner.invoke(
        app, ["lr", str(smoke_config), "--out", str(tmp_path), "-q", "--set", "train.clip={percentile: 50, window: 10}"]
    )
    assert result.exit_code == 0, result.output
    steps = pd.read_csv(tmp_path / "lr" / "steps.csv")
    first = steps[steps["trial_id"] == 0]
    expected = [np.percentile(first["grad_norm"].to_numpy()[max(0, i - 9) : i + 1], 50) for i in range(len(first))]
    np.testing.assert_allclose(first["clip_threshold"], expected, rtol=1e-5)
    assert (first["clipped"] == (first["grad_norm"] > first["clip_threshold"])).all()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["{tmp}/missing"], "neither a run folder nor a config"),
        (["{run}", "--trial", "99"], "--trial 99: no such trial"),
        (["{smoke}"], "needs --lr"),
        (["{run}", "--lr", "0.1"], "add --sweep"),
        (["{tmp}"], "summary.json: not found"),
    ],
)
def test_source_errors_exit_2(lr_run, smoke_config, tmp_path, args, expected):
    args = [a.format(tmp=tmp_path, run=lr_run, smoke=smoke_config) for a in args]
    result = runner.invoke(app, ["clip-report", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_config_source_with_sweep_reuses_the_recorded_trial_as_baseline(smoke_config, tmp_path):
    summary = clip_report(smoke_config, "--lr", 1.0, "--sweep", "--out", tmp_path)
    trials = pd.read_csv(tmp_path / "clip" / "trials.csv")
    steps = pd.read_csv(tmp_path / "clip" / "steps.csv")
    assert list(trials["trial_id"]) == [0, 1, 2, 3, 4]  # trial 0 ran once: the norms and the baseline
    assert not steps.duplicated(["trial_id", "step"]).any()
    assert summary["sweep"][0]["clip_threshold"] is None


def sweep_table(rows):
    """(phase, percentile, threshold, status, clipped_fraction, loss) rows of a one-seed clip sweep."""
    return pd.DataFrame(
        [
            {
                "trial_id": i,
                "lr": 1.0,
                "phase": phase,
                "clip_percentile": p,
                "clip_threshold": t,
                "status": status,
                "reason": status,
                "clipped_fraction": f,
                "best_eval_loss": loss,
            }
            for i, (phase, p, t, status, f, loss) in enumerate(rows)
        ]
    )


def test_a_threshold_that_clips_most_steps_is_never_the_recommendation():
    """The best-looking threshold clips 90% of its steps: that is a lower learning rate, not a rescue."""
    from stabsweep.analysis.clip import recommended, sweep_rows, verdict

    rows = sweep_rows(
        sweep_table(
            [
                ("baseline", None, None, "diverged", None, 2.3),
                ("clip", 50.0, 0.5, "ok", 0.9, 0.10),  # best loss, clips 90% of steps
                ("clip", 75.0, 1.2, "ok", 0.3, 0.15),
                ("clip", 90.0, 2.0, "ok", 0.1, 0.20),
                ("clip", 99.0, 5.0, "diverged", 0.01, 2.3),
            ]
        ),
        aggressive_fraction=0.5,
    )
    by_percentile = {r["clip_percentile"]: r for r in rows}
    assert by_percentile[50.0]["aggressive"] and not by_percentile[50.0]["rescued"]
    assert by_percentile[75.0]["rescued"] and by_percentile[90.0]["rescued"]
    assert recommended(rows)["clip_percentile"] == 90.0  # the highest threshold that rescues: least intrusive
    from stabsweep.analysis.clip import norm_report

    text = verdict("trial 0", norm_report(np.linspace(1, 2, 200)), rows)
    assert (
        "clipping at p90 = 2 trained ok" in text and "p50 (90% of steps)" in text and "lower the rate instead" in text
    )


def test_the_norm_report_flags_a_threshold_below_most_early_norms():
    from stabsweep.analysis.clip import norm_report

    calm = norm_report(np.ones(1000))
    assert calm.clipped_fraction == 0 and not calm.aggressive
    spiky_start = np.concatenate([np.full(100, 10.0), np.ones(900)])  # large early norms, then calm
    report = norm_report(spiky_start, percentile=90)
    assert report.early_clipped_fraction == 1.0 and report.aggressive  # p90 sits below every early norm
