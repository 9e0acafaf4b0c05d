"""Executors and engines from the command line: the same files whichever runs the trials."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from stabsweep.cli import app

from .conftest import ROOT, needs_ray
from .sweep_files import assert_same_sweep, sweep_files

runner = CliRunner()


def lr_run(smoke_config, out, *flags):
    result = runner.invoke(app, ["lr", str(smoke_config), "--out", str(out), "-q", *map(str, flags)])
    assert result.exit_code == 0, result.output
    return sweep_files(out / "lr")


@pytest.fixture(scope="module")
def reference(smoke_config_path, tmp_path_factory):
    """The 4-trial smoke sweep, one trial at a time in this process: the plain reference."""
    return lr_run(smoke_config_path, tmp_path_factory.mktemp("reference"), "--engine", "sequential")


@pytest.fixture(scope="module")
def smoke_config_path():
    from .conftest import CONFIGS

    return CONFIGS / "smoke.yaml"


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags",
    [
        ["--engine", "vectorized"],
        ["--executor", "process", "--workers", "2"],
        ["--executor", "process", "--engine", "sequential"],
        pytest.param(["--executor", "ray"], marks=needs_ray),
        pytest.param(["--executor", "ray", "--engine", "sequential"], marks=needs_ray),
    ],
    ids=["local-vectorized", "process-vectorized", "process-sequential", "ray-vectorized", "ray-sequential"],
)
def test_every_executor_and_engine_writes_the_same_trials(flags, reference, smoke_config_path, tmp_path):
    assert_same_sweep(lr_run(smoke_config_path, tmp_path, *flags), reference)


FP16 = f"workload: {{factory: '{ROOT}/tests/field_cases/10-fp16-adam-eps/workload.py:build'}}\n"


def test_a_batchnorm_model_runs_vectorized(write_config):
    config = write_config(
        "name: t\nworkload: {name: cnn, args: {channels: 4}, batch_size: 16}\n"
        "train: {steps: 5, eval_every: 5}\nlr_sweep: {lrs: [0.01, 0.1]}\n"
    )
    result = runner.invoke(app, ["lr", str(config), "--engine", "vectorized", "--out", str(config.parent / "o")])
    assert result.exit_code == 0, result.output
    assert "one at a time" not in result.output


def test_forcing_vectorized_on_a_float16_model_is_a_clear_error(write_config):
    config = write_config(f"name: t\n{FP16}train: {{steps: 5, eval_every: 5}}\nlr_sweep: {{lrs: [0.01, 0.1]}}\n")
    result = runner.invoke(app, ["lr", str(config), "--engine", "vectorized", "--out", str(config.parent / "o")])
    assert result.exit_code == 2
    assert "execution.engine" in result.output and "float16" in result.output
    assert "Traceback" not in result.output


def test_auto_engine_says_why_trials_run_one_at_a_time_before_they_start(write_config):
    config = write_config(f"name: t\n{FP16}train: {{steps: 5, eval_every: 5}}\nlr_sweep: {{lrs: [0.01, 0.1, 1.0]}}\n")
    result = runner.invoke(app, ["lr", str(config), "--out", str(config.parent / "o")])
    assert result.exit_code == 0, result.output
    assert result.output.count("running trials one at a time: its trainable parameters are float16") == 1
    notice = result.output.index("running trials one at a time")
    assert notice < result.output.index("lr=0.01 seed 0")  # said before the first trial finished


def test_bad_execution_settings_are_config_errors(write_config):
    config = write_config("name: t\nworkload: {name: mlp}\nexecution: {executor: kubernetes}\n")
    result = runner.invoke(app, ["lr", str(config)])
    assert result.exit_code == 2 and "execution.executor" in result.output
    result = runner.invoke(app, ["lr", str(config), "--executor", "nope"])
    assert result.exit_code == 2 and "--executor" in result.output


def test_ray_executor_without_ray_says_how_to_install_it(smoke_config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    result = runner.invoke(app, ["lr", str(smoke_config), "--executor", "ray", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "stabsweep[ray]" in result.output


def test_resume_may_change_the_executor_but_not_the_trials(smoke_config, tmp_path):
    assert runner.invoke(app, ["lr", str(smoke_config), "--out", str(tmp_path), "-q"]).exit_code == 0
    result = runner.invoke(
        app, ["lr", str(smoke_config), "--out", str(tmp_path), "-q", "--resume", "--engine", "sequential"]
    )
    assert result.exit_code == 0, result.output
    changed = runner.invoke(
        app, ["lr", str(smoke_config), "--out", str(tmp_path), "--resume", "--set", "train.steps=61"]
    )
    assert changed.exit_code == 2 and "train.steps" in changed.output


@needs_ray
@pytest.mark.slow
def test_a_local_ray_listens_on_loopback_only(smoke_config_path, tmp_path):
    """The GCS, raylet and workers of the local Ray the ray executor starts bind to 127.0.0.1."""
    import ipaddress
    import os

    psutil = pytest.importorskip("psutil")
    lr_run(smoke_config_path, tmp_path, "--executor", "ray")  # starts (or reuses) the local Ray
    ray_processes = {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}
    try:
        listening = [
            c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in ray_processes
        ]
    except psutil.AccessDenied:
        pytest.skip("the listening sockets of this machine cannot be read")
    assert listening, "the ray executor should have started a local Ray"
    for connection in listening:
        address = ipaddress.ip_address(connection.laddr.ip)
        address = getattr(address, "ipv4_mapped", None) or address
        assert address.is_loopback, f"pid {connection.pid} listens on {connection.laddr.ip}:{connection.laddr.port}"
