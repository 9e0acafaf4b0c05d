"""Sweep ``sweep.yaml`` with each engine and executor, and compare every trial with the same
training written as a plain PyTorch loop (the README's "batch vs plain loop" figures).

    python examples/outside/compare.py [--no-ray]

Prints, per run and trial, the largest relative difference of the per-step training loss
over the first 20 steps (or until the trial diverged).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workload import build  # noqa: E402


def plain_losses(lrs: np.ndarray, seed: int = 3) -> np.ndarray:
    """Adam, clip_grad_norm_ at 1.0, and the lr of each step as stabsweep logged it."""
    workload = build(seed, 32, 64)
    model = workload.model
    optimizer = torch.optim.Adam(model.parameters(), lr=float(lrs[0]))
    batches = (batch for _ in range(len(lrs)) for batch in workload.train_data)
    losses = []
    for lr in lrs:
        loss = workload.loss(model, next(batches))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = float(lr)
        optimizer.step()
        losses.append(loss.item())
    return np.array(losses)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    runs = {"sequential": ["--engine", "sequential"], "vectorized": [], "process": ["--executor", "process"]}
    if not args.no_ray:
        runs["ray"] = ["--executor", "ray"]
    out = Path(tempfile.mkdtemp(prefix="stabsweep-outside-"))
    for name, flags in runs.items():
        command = [sys.executable, "-m", "stabsweep", "lr", str(HERE / "sweep.yaml"), "--out", str(out / name)]
        subprocess.run([*command, "--quiet", "--force", *flags], check=True)
        trials = pd.read_csv(out / name / "lr" / "trials.csv").set_index("trial_id")
        for trial_id, steps in pd.read_csv(out / name / "lr" / "steps.csv").groupby("trial_id"):
            got = steps.train_loss.to_numpy()[:20]
            want = plain_losses(steps.lr.to_numpy())[: len(got)]
            row = trials.loc[trial_id]
            worst = np.max(np.abs(got - want) / np.abs(want))
            print(f"{name:10s} lr {row.lr:<8.4g} {row.status:9s} steps {row.steps_run:4d}  max rel diff {worst:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
