"""The Python API (docs/contract.md, "Python API"): one call per command, the CLI's code path.

A notebook's factory is a callable the workers cannot import: here one defined inside a test
function. Each result object is checked against the files the same run wrote, and against
the CLI run on the same config; bad input raises the message the CLI prints.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import stabsweep
from stabsweep.cli import app
from stabsweep.results.store import read_table

from .conftest import CONFIGS, ROOT
from .sweep_files import assert_same_sweep, sweep_files

runner = CliRunner()
SMOKE = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())


def notebook_factory():
    """A factory as a notebook defines it: a closure no worker could import by name."""
    from stabsweep.workloads import mlp

    def build(seed, batch_size=32, hidden=32, depth=2):
        return mlp.build(seed=seed, batch_size=batch_size, hidden=hidden, depth=depth)

    return build


def smoke(**changes):
    """The smoke config as a mapping, its workload left to the factory."""
    config = {key: value for key, value in SMOKE.items() if key != "workload"}
    config["workload"] = {"batch_size": 32}
    return {**config, **changes}


@pytest.mark.slow
def test_lr_with_a_callable_factory_equals_the_cli_run(tmp_path):
    cli = runner.invoke(app, ["lr", str(CONFIGS / "smoke.yaml"), "--out", str(tmp_path / "cli"), "--quiet"])
    assert cli.exit_code == 0, cli.output

    result = stabsweep.lr(smoke(), factory=notebook_factory(), out=tmp_path / "api", quiet=True)

    assert isinstance(result, stabsweep.LrResult)
    assert result.folder == tmp_path / "api" / "lr"
    assert_same_sweep(sweep_files(result.folder), sweep_files(tmp_path / "cli" / "lr"))
    want = json.loads((tmp_path / "cli" / "lr" / "summary.json").read_text())
    for key in ("best_lr", "unstable_base_lr", "p_unstable", "unstable_kind", "best_trial_id"):
        assert result.summary[key] == want[key], key
    # the typed attributes are the summary's, the tables the files'
    assert (result.best_lr, result.unstable_base_lr) == (want["best_lr"], want["unstable_base_lr"])
    assert result.verdict == json.loads((result.folder / "summary.json").read_text())["verdict"]
    pd.testing.assert_frame_equal(result.trials, read_table(result.folder / "trials.csv"))
    pd.testing.assert_frame_equal(result.steps, read_table(result.folder / "steps.csv"))
    pd.testing.assert_frame_equal(result.evals, read_table(result.folder / "evals.csv"))
    assert list(result.rates["lr"]) == [0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
    # the next command names the config the run saved (a mapping has no file of its own)
    assert result.next_command == f"stabsweep warmup --from {tmp_path / 'api'}"
    saved = yaml.safe_load((result.folder / "config.yaml").read_text())
    assert saved["workload"]["factory"].endswith("notebook_factory.<locals>.build")
    # the figures drawn by this run, as figures with axes
    figure = result.plot()
    assert figure.axes and figure is result.plot("lr_sweep")
    assert set(result.figure_names) == {"lr_sweep", "loss_curves", "grad_norms"}
    with pytest.raises(stabsweep.UserError, match="no figure 'nope'"):
        result.plot("nope")

    # warmup and clip-report from the result, as --from RUN does
    warm = stabsweep.warmup(from_run=result, factory=notebook_factory(), quiet=True, warmup_sweep__seeds=1)
    assert isinstance(warm, stabsweep.WarmupResult)
    assert warm.unstable_base_lr == result.unstable_base_lr
    assert warm.folder == tmp_path / "api" / "warmup"
    clip = stabsweep.clip_report(result, quiet=True)
    assert clip.threshold == pytest.approx(clip.summary["threshold"]) and clip.threshold > 0


def test_config_keys_as_keywords_and_as_a_section_are_the_same(tmp_path):
    from stabsweep.api.commands import load, request

    def config(**overrides):
        made = request(
            "lr",
            CONFIGS / "smoke.yaml",
            None,
            out=None,
            seeds=3,
            device=None,
            engine="sequential",
            executor=None,
            workers=None,
            ray_address=None,
            resume=False,
            force=False,
            quiet=True,
            log_to=None,
            overrides=overrides,
        )
        return load(made)

    flat = config(train__steps=7, train__optimizer__momentum=0.5)
    nested = config(train={"steps": 7, "optimizer": {"momentum": 0.5}})
    assert flat.model_dump() == nested.model_dump()
    assert flat.train.steps == 7 and flat.train.optimizer.kwargs["momentum"] == 0.5
    assert flat.train.optimizer.name == "momentum"  # merged, not replaced
    assert flat.lr_sweep.seeds == 3 and flat.execution.engine == "sequential"


@pytest.mark.parametrize(
    ("text", "args"),
    [
        ("name: t\nworkload: {name: mlp}\ntrain: {stepz: 3}\n", {}),
        ("name: t\nworkload: {name: mlp}\n", {"train__steps": 0}),
        ("name: t\nworkload: {name: nope}\n", {}),
    ],
)
def test_bad_input_raises_the_message_the_cli_prints(write_config, tmp_path, text, args):
    path = write_config(text)
    with pytest.raises(stabsweep.UserError) as raised:
        stabsweep.lr(path, out=tmp_path / "api", quiet=True, **args)
    flags = [f"--set={key.replace('__', '.')}={value}" for key, value in args.items()]
    cli = runner.invoke(app, ["lr", str(path), "--out", str(tmp_path / "cli"), *flags])
    assert cli.exit_code == 2
    message = raised.value.message
    if args:  # the CLI names its option, the API its keyword; the rest is the same
        message = message.replace("train__steps=", "--set train.steps")
    assert cli.output.strip() == f"error: {message}"


def test_a_notebook_factory_with_worker_processes_is_refused_clearly(tmp_path):
    with pytest.raises(stabsweep.UserError, match="cannot be sent to the workers of executor 'process'") as raised:
        stabsweep.lr(smoke(), factory=notebook_factory(), out=tmp_path, executor="process", quiet=True)
    assert "define it in a module" in raised.value.message


def test_a_module_factory_is_named_and_runs_anywhere():
    from stabsweep.workloads import mlp
    from stabsweep.workloads.factory import name_of_callable

    assert name_of_callable(mlp.build) == ("stabsweep.workloads.mlp:build", True)
    assert name_of_callable(notebook_factory())[1] is False
    assert name_of_callable(lambda seed: None)[1] is False


def test_nothing_trained_raises_run_failed_with_the_result(tmp_path):
    def build(seed, batch_size=32):
        from stabsweep.workloads import mlp

        workload = mlp.build(seed=seed, batch_size=batch_size, hidden=8, depth=1)
        workload.loss_fn = lambda outputs, targets: (_ for _ in ()).throw(KeyError("label_smoothing"))
        return workload

    config = smoke(train={"steps": 5, "eval_every": 5, "optimizer": {"name": "momentum"}}, lr_sweep={"lrs": [0.1, 1]})
    with pytest.raises(stabsweep.RunFailed) as raised:
        stabsweep.lr(config, factory=build, out=tmp_path, quiet=True)
    result = raised.value.result
    assert isinstance(result, stabsweep.LrResult)
    assert "KeyError" in result.verdict and result.summary["nothing_trained"]
    assert result.next_command.startswith("stabsweep doctor")


def test_doctor_and_find_return_their_results(tmp_path):
    found = stabsweep.find(CONFIGS / "smoke.yaml", out=tmp_path, quiet=True, find__steps=60)
    assert isinstance(found, stabsweep.FindResult)
    assert found.suggested_lr == found.summary["suggested_lr"] and found.suggested_lr > 0
    assert found.plot().axes
    checked = stabsweep.doctor(CONFIGS / "smoke.yaml", out=tmp_path, quiet=True, lr=0.1)
    assert isinstance(checked, stabsweep.DoctorResult)
    assert list(checked.checks["name"])[:2] == ["data_finite", "labels_in_range"]
    assert checked.passed == (not checked.failed)


def test_open_run_reads_a_finished_run_without_torch(tmp_path):
    cli = runner.invoke(app, ["lr", str(CONFIGS / "smoke.yaml"), "--out", str(tmp_path), "--quiet"])
    assert cli.exit_code == 0
    script = f"""
import sys
import stabsweep
run = stabsweep.open_run({str(tmp_path)!r})
lr = run.lr
assert isinstance(lr, stabsweep.LrResult) and run.tune is None
assert lr.best_lr == {json.loads((tmp_path / "lr" / "summary.json").read_text())["best_lr"]!r}
assert len(lr.trials) == 6 and len(lr.steps) > 0 and len(lr.evals) > 0
figure = lr.plot("loss_curves")
assert figure.get_size_inches()[0] > 1
same = stabsweep.open_run({str(tmp_path / "lr")!r})
assert same.best_lr == lr.best_lr
assert "torch" not in sys.modules, "reading a run imported torch"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_open_run_of_a_folder_without_a_run_is_a_user_error(tmp_path):
    with pytest.raises(stabsweep.UserError, match="no stage of a stabsweep run here"):
        stabsweep.open_run(tmp_path)
    with pytest.raises(stabsweep.UserError, match="run folder not found"):
        stabsweep.open_run(tmp_path / "missing")


@pytest.mark.slow
def test_the_notebook_example_runs_as_written(tmp_path, monkeypatch):
    """examples/notebook.py, as a user runs it, on the smoke config instead of the quickstart's
    (seconds, not a minute) and writing into a scratch folder."""
    source = (ROOT / "examples" / "notebook.py").read_text()
    assert 'stabsweep.tune("configs/quickstart.yaml", factory=build' in source  # what the README shows
    source = source.replace("configs/quickstart.yaml", str(CONFIGS / "smoke.yaml"))
    source = source.replace("docs/images/notebook_frontier.png", str(tmp_path / "frontier.png"))
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    exec(compile(source, "examples/notebook.py", "exec"), namespace)
    result = namespace["result"]
    assert isinstance(result, stabsweep.TuneResult) and result.chosen in {"none", "warmup", "clip", "skip", "both"}
    assert result.folder.resolve() == tmp_path / "runs" / "notebook" / "tune"
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    assert set(result.stages) == {"lr", "warmup", "clip"}
