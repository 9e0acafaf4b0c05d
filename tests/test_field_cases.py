"""The field cases: public bug reports rebuilt as small inputs, each with the right answer a
plain PyTorch loop gave (``tests/field_cases/*/CASE.md`` and ``reference.py``, copied from the
project's shared folder). Each is run as a new user would, from the folder above the case,
and checked against the numbers of its reference loop.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from stabsweep.cli import app

CASES = Path(__file__).resolve().parent / "field_cases"
runner = CliRunner()

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A copy of a case under tmp_path/proj, and the cwd its parent, as a user who runs
    ``stabsweep lr proj/sweep.yaml`` from the folder above their project."""

    def copy(case: str) -> Path:
        target = tmp_path / "proj"
        shutil.copytree(CASES / case, target)
        monkeypatch.chdir(tmp_path)
        return Path("proj")

    return copy


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def reference(project: Path):
    """The case's plain PyTorch loop, imported as a module. Each case's reference imports its
    own ``workload`` module, and sets torch to one thread: both are undone for the next test."""
    import re

    import torch

    threads = torch.get_num_threads()
    sys.modules.pop("workload", None)
    spec = importlib.util.spec_from_file_location("field_case_reference", project.resolve() / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.set_num_threads(threads)
    sys.modules.pop("workload", None)
    module.best_eval = lambda text: float(re.search(r"best eval (\d+\.\d+)", text).group(1))
    return module


def trials_of(out: Path, command: str = "lr") -> pd.DataFrame:
    return pd.read_csv(out / command / "trials.csv").sort_values("lr")


def test_02_batch_noise_is_not_instability(project):
    """Batches of 4 with 15% wrong labels: at 1e-3 and 1e-2 the loss over the whole training
    set only falls (reference.py --full), so neither rate is unstable, whatever the batches do."""
    proj = project("02-lrfind-noisy-small-batch")
    plain = reference(proj)
    for lr in (0.001, 0.01):
        _, (share, _) = plain.full_train_curve(lr)
        assert share < 0.25  # the contract's rise_fraction: the objective never gave back a quarter

    result = invoke("lr", proj / "sweep.yaml", "--out", "run")
    assert result.exit_code == 0, result.output
    trials = trials_of(Path("run")).set_index("lr")
    assert trials.loc[0.001, "status"] == "ok" and trials.loc[0.01, "status"] == "ok"
    assert trials.loc[0.0001, "status"] == "learned_nothing"  # too slow to learn in 300 steps: right
    assert trials.loc[0.1, "status"] == "learned_nothing" and trials.loc[1.0, "status"] == "diverged"
    for lr in (0.001, 0.01):  # the very runs the plain loop judged
        assert trials.loc[lr, "best_eval_loss"] == pytest.approx(plain.best_eval(plain.run(lr)), abs=2e-4)
    summary = json.loads((Path("run") / "lr" / "summary.json").read_text())
    assert summary["best_lr"] == 0.01 and summary["unstable_base_lr"] == 0.1
    assert summary["unstable_kind"] == "learned_nothing"  # the edge is real: 0.1 learns nothing in the plain loop
    assert not any("itself unstable" in w for w in summary["warnings"])


def test_06_the_users_error_not_the_engines(project):
    """Labels 1..10 for 10 classes: the default (vectorized) engine reports the error the
    trial raises alone, the plain loop's, and points to doctor; exit 3."""
    proj = project("06-labels-off-by-one")
    for engine in ("auto", "sequential"):
        result = invoke("lr", proj / "sweep.yaml", "--out", f"run-{engine}", "--engine", engine)
        assert result.exit_code == 3, result.output
        trials = trials_of(Path(f"run-{engine}"))
        assert (trials["status"] == "failed").all()
        assert (trials["error"] == "IndexError: Target 10 is out of bounds.").all()
        assert not trials["error"].str.contains("dimension 2").any()
        summary = json.loads((Path(f"run-{engine}") / "lr" / "summary.json").read_text())
        assert summary["next_command"] == "stabsweep doctor proj/sweep.yaml"
        assert "IndexError: Target 10 is out of bounds." in summary["verdict"]
    # The plain loop's first step raises the same error, word for word (reference.py).
    sys.modules.pop("workload", None)
    sys.path.insert(0, str(proj.resolve()))
    try:
        import workload

        built = workload.build(seed=0)
        inputs, targets = next(iter(built.train_data))
        with pytest.raises(IndexError) as raised:
            built.loss_fn(built.model(inputs), targets)
        assert f"IndexError: {raised.value}" == "IndexError: Target 10 is out of bounds."
    finally:
        sys.path.remove(str(proj.resolve()))
        sys.modules.pop("workload", None)


def test_06_curvature_reports_the_users_error_not_its_own(project):
    """The probe's loss raises the user's IndexError: said as theirs, exit 3, doctor next; no
    "internal error" (a bug of stabsweep's is exit 1 with a traceback)."""
    proj = project("06-labels-off-by-one")
    result = invoke("curvature", proj / "sweep.yaml", "--out", "run")
    assert result.exit_code == 3, result.output
    assert "internal error" not in result.output and "Traceback" not in result.output
    summary = json.loads((Path("run") / "curvature" / "summary.json").read_text())
    assert summary["verdict"].startswith("No sharpness measured: your code raised IndexError at ")
    assert summary["verdict"].endswith(": Target 10 is out of bounds.") and summary["sharpness"] is None
    assert summary["next_command"] == "stabsweep doctor proj/sweep.yaml"


def test_10_curvature_of_float16_adam_names_the_zero_preconditioner_then_measures_with_eps(project):
    """eps 1e-8 is 0 in float16: Adam's P has zeros (its first update is 0/0), so the
    preconditioned sharpness is unbounded, said so with exit 3 rather than ARPACK's error; with
    eps 1e-4 the probe measures a finite, converged value."""
    proj = project("10-fp16-adam-eps")
    result = invoke("curvature", proj / "sweep.yaml", "--out", "nan")
    assert result.exit_code == 3, result.output
    assert "internal error" not in result.output
    summary = json.loads((Path("nan") / "curvature" / "summary.json").read_text())
    assert "preconditioner P = √v + ε is 0 on" in summary["verdict"]
    assert "ε = 1e-08 is 0 in float16" in summary["verdict"] and "raise train.optimizer.eps" in summary["verdict"]
    result = invoke("curvature", proj / "sweep.yaml", "--out", "eps", "--set", "train.optimizer.eps=1e-4")
    assert result.exit_code == 0, result.output
    summary = json.loads((Path("eps") / "curvature" / "summary.json").read_text())
    assert summary["converged"] and summary["preconditioned"] and summary["sharpness"] > 0


@pytest.mark.parametrize("engine", ["auto", "sequential"])
def test_10_float16_adam_eps(project, engine):
    """Float16 weights: with eps 1e-8 every rate is NaN at step 2 (numerics, not the rate,
    next doctor); with eps 1e-4 the plain loop's numbers: lr* 0.01, 0.1 diverges at step 2."""
    proj = project("10-fp16-adam-eps")
    result = invoke("lr", proj / "sweep.yaml", "--out", "nan", "--engine", engine, "--set", "train.steps=20")
    assert result.exit_code == 0, result.output
    trials = trials_of(Path("nan"))
    assert (trials["status"] == "diverged").all() and (trials["diverged_step"] == 2).all()
    summary = json.loads((Path("nan") / "lr" / "summary.json").read_text())
    assert summary["rate_independent"]["kind"] == "non_finite"
    assert summary["next_command"] == "stabsweep doctor proj/sweep.yaml"
    assert "warmup" not in summary["verdict"] and "grid is too high" not in " ".join(summary["warnings"])

    result = invoke("lr", proj / "sweep.yaml", "--out", "eps", "--engine", engine, "--set", "train.optimizer.eps=1e-4")
    assert result.exit_code == 0, result.output
    trials = trials_of(Path("eps")).set_index("lr")
    expected = {1e-4: 2.1048, 1e-3: 0.8347, 1e-2: 0.4682}  # python reference.py 1e-4
    for lr, best in expected.items():
        assert trials.loc[lr, "status"] in ("ok", "unstable")
        assert trials.loc[lr, "best_eval_loss"] == pytest.approx(best, abs=2e-4)
    if engine == "auto":  # the same as the plain torch.optim.Adam loop, run here
        plain = reference(proj)
        assert trials.loc[1e-2, "best_eval_loss"] == pytest.approx(plain.best_eval(plain.run(1e-2, 1e-4)), abs=2e-4)
        assert plain.run(0.1, 1e-4).startswith("diverged at step 2")
    assert trials.loc[0.1, "status"] == "diverged" and trials.loc[0.1, "diverged_step"] == 2
    summary = json.loads((Path("eps") / "lr" / "summary.json").read_text())
    assert (summary["best_lr"], summary["unstable_base_lr"]) == (0.01, 0.1)


def test_01_find_does_not_headline_a_rate_full_training_already_failed_at(project):
    """The range test's valley, 0.739, diverges in full training (plain loop: step 37); the lr
    sweep in the same folder already found the edge at 0.2, so find points below it."""
    proj = project("01-lrfind-suggests-unstable")
    result = invoke("lr", proj / "sweep.yaml", "--out", "run")
    assert result.exit_code == 0, result.output
    lr_summary = json.loads((Path("run") / "lr" / "summary.json").read_text())
    assert (lr_summary["best_lr"], lr_summary["unstable_base_lr"]) == (0.1, 0.2)

    result = invoke("find", proj / "sweep.yaml", "--out", "run")
    assert result.exit_code == 0, result.output
    summary = json.loads((Path("run") / "find" / "summary.json").read_text())
    assert summary["suggestions"]["valley"] == pytest.approx(0.739, rel=0.02)
    above = summary["suggestion_above_unstable"]
    assert above["lr"] == pytest.approx(0.739, rel=0.02) and above["unstable_base_lr"] == 0.2
    assert summary["suggested_lr"] < 0.2
    assert "do not train at it" in summary["verdict"] and "best rate is 0.1" in summary["verdict"]
    grid = summary["lr_grid"]
    rates = [grid["min"] * (grid["max"] / grid["min"]) ** (i / (grid["num"] - 1)) for i in range(grid["num"])]
    assert sum(r > 0.2 for r in rates) < len(rates) / 2

    # The plain loop: the valley diverges, the rate find now points to trains.
    plain = reference(proj)
    assert plain.run(0.739).startswith("diverged at step 37")
    assert plain.run(summary["suggested_lr"]).startswith("trained")
