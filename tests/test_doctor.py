"""``stabsweep doctor``: a healthy workload passes; each planted bug fails the check that
should catch it (and exit code 3)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stabsweep.cli import app

from .conftest import ROOT

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
        "batch_outliers",
        "initial_loss",
        "finite_gradients",
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
        ("outlier_batch", "batch_outliers", [], "batch 5 (loss"),
        ("sqrt_at_zero", "finite_gradients", [], "'inp.weight', 'inp.bias' at step 1 while the loss was still finite"),
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
def test_a_crash_in_the_model_fails_one_check_and_the_others_still_run(tmp_path, monkeypatch):
    """The eval path raises: the first check that meets it fails with the error; the later ones
    that raise the same error are not run because of it (one fault, one failure)."""
    monkeypatch.chdir(__import__("tests.conftest", fromlist=["ROOT"]).ROOT)
    result, summary = doctor(tmp_path, "crashes_in_eval_mode")
    assert result.exit_code == 3
    found = {c["name"]: c for c in summary["checks"]}
    assert len(found) == 10  # every check ran or says why not
    failed = [name for name, c in found.items() if c["status"] == "fail"]
    assert failed == ["gradient_check"] and "my model's eval path is broken" in found["gradient_check"]["measured"]
    assert found["dead_units"]["status"] == "not run"  # it evaluates too, after gradient_check
    assert "the same error as gradient_check" in found["dead_units"]["measured"]
    for name in ("overfit_one_batch", "initial_loss", "finite_gradients", "update_ratio"):  # training works
        assert found[name]["status"] == "pass", found[name]


@pytest.mark.slow
def test_labels_out_of_range_fail_once(tmp_path, monkeypatch):
    """The field case 06: labels 1..10 for 10 classes. labels_in_range names the label; every
    check that raises the IndexError it causes is not run because of it."""
    import shutil

    shutil.copytree(ROOT / "tests" / "field_cases" / "06-labels-off-by-one", tmp_path / "proj")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["doctor", "proj/sweep.yaml", "--json"])
    assert result.exit_code == 3
    summary = json.loads(result.stdout)
    found = {c["name"]: c for c in summary["checks"]}
    assert [n for n, c in found.items() if c["status"] == "fail"] == ["labels_in_range"]
    assert "target 10" in found["labels_in_range"]["measured"] and "[0, 10)" in found["labels_in_range"]["expected"]
    not_run = [n for n, c in found.items() if c["status"] == "not run"]
    assert len(not_run) >= 5 and all("labels_in_range failed" in found[n]["measured"] for n in not_run)


@pytest.mark.slow
def test_float16_adam_eps_names_the_optimizer_not_the_rate(tmp_path, monkeypatch):
    """The field case 10: gradcheck of a float16 nn.Linear passes (a float64 copy, the loss's
    float32 setting the tolerances); overfit fails at every rate, so its advice is not "lower
    the rate"; update_ratio names the optimizer's step that made finite weights NaN."""
    import shutil

    shutil.copytree(ROOT / "tests" / "field_cases" / "10-fp16-adam-eps", tmp_path / "proj")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["doctor", "proj/sweep.yaml", "--json"])
    assert result.exit_code == 3
    found = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert found["gradient_check"]["status"] == "pass" and "float32" in found["gradient_check"]["measured"]
    assert found["overfit_one_batch"]["status"] == "fail"
    assert (
        "not the rate" in found["overfit_one_batch"]["advice"]
        and "lower the rate" not in found["overfit_one_batch"]["advice"]
    )
    assert found["update_ratio"]["status"] == "fail" and "eps" in found["update_ratio"]["advice"]
    assert found["finite_gradients"]["status"] == "pass"  # the gradients were finite: the step broke the weights


@pytest.mark.slow
def test_a_rate_that_is_too_high_is_advised_lower_because_a_lower_one_fits(tmp_path, monkeypatch):
    monkeypatch.chdir(__import__("tests.conftest", fromlist=["ROOT"]).ROOT)
    _, summary = doctor(tmp_path, "healthy", "--lr", "3.0")
    found = {c["name"]: c for c in summary["checks"]}
    assert found["overfit_one_batch"]["status"] == "fail"
    assert found["overfit_one_batch"]["advice"].startswith("lower the rate: at 0.03")


def test_weight_decay_that_dominates_the_update_is_named():
    from stabsweep.analysis.doctor import update_ratio, weight_decay_dominates

    words = weight_decay_dominates({"w": 1.1e-4, "v": 0.9e-4}, lr=1e-3, weight_decay=0.1)
    assert words and "weight decay dominates the update" in words and "lr × weight_decay = 0.0001" in words
    assert weight_decay_dominates({"w": 1e-2}, lr=1e-3, weight_decay=0.1) is None
    found = update_ratio({"w": 1e-4}, 1e-3, "sgd", {"w": 0.1}, words)
    assert "weight decay" in found.advice


def test_update_ratio_never_passes_nan_and_is_judged_per_optimizer():
    import math

    from stabsweep.analysis.doctor import update_ratio

    assert update_ratio({"a": math.nan, "b": 1e-3}, 1e-3, "sgd", {"a": 0.1, "b": 0.1}).status == "fail"
    # Adam's step is about lr per element: a small-init embedding moving 4% a step is its pace
    adam = update_ratio({"emb": 0.04}, 1e-3, "adam", {"emb": 0.02})
    assert adam.status == "pass" and "adaptive step" in adam.expected and "lr / rms(w), is 0.05" in adam.measured
    assert update_ratio({"emb": 0.04}, 1e-3, "sgd", {"emb": 0.02}).status == "warn"  # SGD's 1e-3 pace
    assert (
        update_ratio({"emb": 1e-9}, 1e-9, "adam", {"emb": 0.1}).status == "fail"
    )  # not learning, whatever the optimizer


@pytest.mark.parametrize(
    ("setting", "key"),
    [("doctor.skip=[overfit]", "doctor.skip[0]"), ("doctor.overfit_steps=0", "doctor.overfit_steps")],
)
def test_bad_doctor_settings_name_the_key(tmp_path, monkeypatch, setting, key):
    monkeypatch.chdir(__import__("tests.conftest", fromlist=["ROOT"]).ROOT)
    result, _ = doctor(tmp_path, "healthy", "--set", setting)
    assert result.exit_code == 2 and key in result.output and "Traceback" not in result.output
