"""``stabsweep doctor``: a healthy workload passes; each planted bug fails the check that
should catch it (and exit code 3)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stabsweep.cli import app

runner = CliRunner()


def doctor(tmp_path, factory: str, *args: str):
    config = tmp_path / "doctor.yaml"
    config.write_text(
        f"# stabsweep doctor doctor.yaml\nname: planted\nworkload: {{factory: 'tests.planted:{factory}'}}\n"
        "train: {steps: 50, optimizer: adam}\ndoctor: {overfit_steps: 150, update_steps: 10}\n"
    )
    result = runner.invoke(app, ["doctor", str(config), "--out", str(tmp_path / "out"), "--json", *args])
    summary = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    return result, summary


def statuses(summary) -> dict[str, str]:
    return {check["name"]: check["status"] for check in summary["checks"]}


@pytest.mark.slow
def test_a_healthy_workload_passes_every_check(tmp_path, monkeypatch):
    monkeypatch.chdir(__import__("tests.conftest", fromlist=["ROOT"]).ROOT)
    result, summary = doctor(tmp_path, "healthy")
    assert result.exit_code == 0, result.output
    assert set(statuses(summary).values()) <= {"pass", "warn"} and statuses(summary)["overfit_one_batch"] == "pass"
    assert list(statuses(summary)) == [
        "data_finite",
        "labels_in_range",
        "initial_loss",
        "overfit_one_batch",
        "gradient_check",
        "dead_units",
        "update_ratio",
        "layer_grad_norms",
    ]
    assert summary["next_command"].startswith("stabsweep lr ")
    assert (tmp_path / "out" / "doctor" / "plots" / "layers.png").stat().st_size > 0
    layers = (tmp_path / "out" / "doctor" / "layers.csv").read_text().splitlines()
    assert layers[0] == "trial_id,step,layer,grad_norm,weight_norm,update_ratio" and len(layers) > 10


@pytest.mark.slow
@pytest.mark.parametrize(
    ("factory", "check", "args", "words"),
    [
        ("nan_in_data", "data_finite", [], "non-finite value at batch"),
        ("labels_out_of_range", "labels_in_range", [], "target 6"),
        ("scaled_logits", "initial_loss", [], "off"),
        ("cannot_learn", "overfit_one_batch", [], "→"),
        ("wrong_backward", "gradient_check", [], "Linear at 'inp'"),
        ("dead_relus", "dead_units", [], "100%"),
        ("healthy", "update_ratio", ["--lr", "1e-9"], "too small"),
        ("vanishing", "layer_grad_norms", [], "×"),
    ],
)
def test_each_planted_bug_fails_its_check(tmp_path, monkeypatch, factory, check, args, words):
    monkeypatch.chdir(__import__("tests.conftest", fromlist=["ROOT"]).ROOT)
    result, summary = doctor(tmp_path, factory, *args)
    assert result.exit_code == 3, result.output
    found = next(c for c in summary["checks"] if c["name"] == check)
    assert found["status"] == "fail", found
    assert words in found["measured"] + found["advice"], found
    assert "failed" in summary["verdict"] and "Traceback" not in result.output


@pytest.mark.slow
def test_a_crash_in_the_model_fails_that_check_and_the_others_still_run(tmp_path, monkeypatch):
    monkeypatch.chdir(__import__("tests.conftest", fromlist=["ROOT"]).ROOT)
    result, summary = doctor(tmp_path, "crashes_in_eval_mode")
    assert result.exit_code == 3
    found = {c["name"]: c for c in summary["checks"]}
    assert len(found) == 8  # every check ran
    for name in ("gradient_check", "dead_units", "update_ratio"):  # the ones that evaluate
        assert found[name]["status"] == "fail" and "my model's eval path is broken" in found[name]["measured"]
    assert found["overfit_one_batch"]["status"] == "pass" and found["initial_loss"]["status"] == "pass"


@pytest.mark.parametrize(
    ("setting", "key"),
    [("doctor.skip=[overfit]", "doctor.skip[0]"), ("doctor.overfit_steps=0", "doctor.overfit_steps")],
)
def test_bad_doctor_settings_name_the_key(tmp_path, monkeypatch, setting, key):
    monkeypatch.chdir(__import__("tests.conftest", fromlist=["ROOT"]).ROOT)
    result, _ = doctor(tmp_path, "healthy", "--set", setting)
    assert result.exit_code == 2 and key in result.output and "Traceback" not in result.output
