"""The slurm executor (docs/contract.md, "Executors"): a sweep as a submitit job array, tried
with submitit's own local executor (a process per job) and its debug executor (in this
process), so no SLURM is needed; results equal the local run's, a lost job's trials come back
with --resume, and bad cluster settings are exit 2 naming the key."""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from stabsweep.cli import app

from .conftest import CONFIGS
from .sweep_files import assert_same_sweep, sweep_files

runner = CliRunner()
pytestmark = pytest.mark.skipif(importlib.util.find_spec("submitit") is None, reason="submitit is not installed")


def sweep(out, *args):
    return runner.invoke(app, ["lr", str(CONFIGS / "smoke.yaml"), "--out", str(out), "--quiet", *args])


@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["local", "debug"])
def test_a_job_array_gives_the_local_runs_results(tmp_path, cluster):
    assert sweep(tmp_path / "here").exit_code == 0
    result = sweep(
        tmp_path / "array",
        "--executor",
        "slurm",
        "--set",
        f"execution.slurm.cluster={cluster}",
        "--set",
        "execution.slurm.array_parallelism=3",
    )
    assert result.exit_code == 0, result.output
    assert_same_sweep(sweep_files(tmp_path / "array" / "lr"), sweep_files(tmp_path / "here" / "lr"))
    logs = list((tmp_path / "array" / "slurm").glob("*_log.out"))
    assert len(logs) == 3  # one job per share of the array, each with its log


@pytest.mark.slow
def test_the_running_jobs_steps_show_while_the_array_runs(tmp_path, monkeypatch):
    """Each job writes its step to a file under RUN/slurm/progress/; the driver shows it (here
    every 0.1 s instead of 2: the file's interval travels with the job), and removes the files."""
    from stabsweep.engine import slurm_executor

    monkeypatch.setattr(slurm_executor, "PROGRESS_EVERY_S", 0.1)
    args = ["lr", str(CONFIGS / "smoke.yaml"), "--out", str(tmp_path), "--executor", "slurm"]
    args += ["--set", "execution.slurm.cluster=local", "--set", "execution.slurm.array_parallelism=2"]
    args += ["--set", "lr_sweep.lrs=[0.01, 0.02, 0.05, 0.1]", "--set", "train.steps=3000"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    # not a terminal: a plain line each time the slowest running job gets a tenth further
    seen = [line.split("batch step ")[1].split(",")[0] for line in result.output.splitlines() if "batch step" in line]
    assert any(int(step.split("/")[0]) < int(step.split("/")[1]) for step in seen), result.output
    assert not list((tmp_path / "slurm" / "progress").glob("*"))  # the submission's step files are gone


@pytest.mark.slow
def test_a_lost_job_loses_only_its_trials_and_resume_runs_them(tmp_path, monkeypatch):
    from stabsweep.engine import executors, slurm_executor

    real = executors.run_unit

    def preempted(specs, job, progress=None):
        if any(spec.trial_id == 0 for spec in specs):
            raise RuntimeError("job 42 CANCELLED due to preemption")
        return real(specs, job, progress)

    monkeypatch.setattr(slurm_executor, "run_unit", preempted)
    args = [
        "--executor",
        "slurm",
        "--set",
        "execution.slurm.cluster=debug",
        "--set",
        "execution.slurm.array_parallelism=3",
    ]
    result = sweep(tmp_path, *args)
    assert result.exit_code == 2
    assert "lost with 1 SLURM job that did not finish" in result.output and "--resume" in result.output
    done = (tmp_path / "lr" / "trials.csv").read_text().splitlines()
    assert len(done) == 1 + 4  # the header, and the trials of the two jobs that finished
    monkeypatch.setattr(slurm_executor, "run_unit", real)
    resumed = sweep(tmp_path, *args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert sweep(tmp_path / "here").exit_code == 0
    assert_same_sweep(sweep_files(tmp_path / "lr"), sweep_files(tmp_path / "here" / "lr"))


def test_slurm_without_slurm_here_is_exit_2_pointing_to_the_local_cluster(tmp_path):
    import shutil

    if shutil.which("srun"):
        pytest.skip("this machine has SLURM")
    result = sweep(tmp_path, "--executor", "slurm")
    assert result.exit_code == 2, result.output
    assert "execution.slurm.cluster: slurm, but this machine has no SLURM" in result.output
    assert "execution.slurm.cluster to local" in result.output


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("execution.slurm.cluster=pbs", "execution.slurm.cluster"),
        ("execution.slurm.time_min=0", "execution.slurm.time_min"),
        ("execution.slurm.partitions=gpu", "execution.slurm.partitions: unknown key (did you mean 'partition'?)"),
    ],
)
def test_bad_cluster_settings_are_exit_2_naming_the_key(tmp_path, setting, words):
    result = sweep(tmp_path, "--executor", "slurm", "--set", setting)
    assert result.exit_code == 2
    assert words in result.output and "Traceback" not in result.output
