"""``make bench`` itself: it runs end to end and writes every ratio (not how fast: that is its job)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_writes_every_ratio(tmp_path):
    bench = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--runs", "1", "--no-ray", "--steps", "60"]
    bench += ["--model-steps", "3"]
    env = {**os.environ, "COLUMNS": "200"}  # one printed line per message
    # A tiny sweep and no time limit of its own: a slow machine makes it slow, never red.
    run = subprocess.run([*bench, "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    frame = pd.read_csv(tmp_path / "bench.csv")
    models = ["resnet", "wide_resnet"] + (["gpt2"] if importlib.util.find_spec("transformers") else [])
    assert list(frame["id"]) == [
        "a",
        "b",
        "b floor",
        "b GEMMs",
        "b'",
        "ckpt",
        "ckpt 1 s",
        "progress",
        "seeds",
        "layers",
        *[f"{model} {row}" for model in models for row in ("seq", "b", "a", "mem")],
    ]
    assert (frame["ratio"] > 0).all() and (frame["seconds"] > 0).all()
    targets = ["a", "b", "ckpt", "progress", "seeds", "layers", *[f"{model} seq" for model in models]]
    assert list(frame.loc[frame["target"].notna(), "id"]) == targets
    assert set(frame.loc[frame["id"].str.endswith(" seq"), "target_kind"]) == {"at least"}
    # The sweep's matrix products: 15.17 MFLOP per trial-step of the quickstart MLP (64-128-128-128-10,
    # batch 64: forward, weight and input gradients), over the trial-steps the printed count gives.
    trial_steps = int(run.stderr.split("the 16-rate sweep ran ")[1].split(" trial-steps")[0].replace(",", ""))
    assert "GFLOP/s" in run.stderr and (frame["sweep_gemm_gflops"] > 0).all()
    assert f"{15_171_584 * trial_steps / 1e9:.0f} GFLOP at" in run.stderr


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_the_cluster_rows_run_on_a_four_node_cluster():
    """``make bench``'s scale rows, with a few trials: each figure is there and plausible."""
    bench = [sys.executable, str(ROOT / "benchmarks" / "cluster.py"), "--trials", "12"]
    run = subprocess.run(bench, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    figures = {line.split("\t")[0]: float(line.split("\t")[1]) for line in run.stdout.splitlines()}
    assert set(figures) == {"cluster", "cluster ms", "local ms", "driver ms", "store"}
    assert figures["cluster"] > 0 and figures["driver ms"] > 0 and figures["store"] > 0
    assert "4-node local Ray cluster started" in run.stderr


@pytest.mark.slow
def test_the_curvature_table_prints_each_workloads_row_from_its_two_commands(tmp_path):
    """``make curvature-table`` end to end on its smallest workload, briefly trained: the row
    is the probe's summary.json, the header's columns and the row's agree."""
    import json

    table = [sys.executable, str(ROOT / "benchmarks" / "curvature_table.py"), "--only", "mlp1", "--steps", "12"]
    run = subprocess.run([*table, "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("|")]
    header, row = lines[0], lines[-1]
    assert header.count("|") == row.count("|") == 12 and row.startswith("| MLP 1 × 256, ReLU | SGD |")
    found = json.loads((tmp_path / "mlp1" / "curvature" / "summary.json").read_text())
    assert f"| {found['predicted_edge']:.3g} |" in row and (tmp_path / "mlp1" / "lr" / "sharpness.csv").is_file()
