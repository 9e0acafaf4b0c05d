"""``train.precision``: mixed precision as users run it (``torch.autocast``; fp16 with
``torch.amp.GradScaler``), against a plain PyTorch loop that does the same. On the CPU bf16
runs in both engines; fp16's scaler runs trials one at a time. Records stay float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stabsweep.config.schema import DetectConfig, OptimizerConfig, ScheduleConfig
from stabsweep.engine.runner import run_trials
from stabsweep.records import TrialJob, TrialSpec

from .reference import dropout_workload

STEPS = 20


def plain_loop(workload, lr: float, steps: int, precision: str, skipped: list | None = None) -> np.ndarray:
    """SGD with momentum under ``torch.autocast``, with a GradScaler for fp16, as the torch.amp
    recipe writes it; ``skipped`` collects the steps the scaler skipped (its scale fell)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    model = workload.model
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    losses: list[float] = []
    while len(losses) < steps:
        for inputs, targets in workload.train_data:
            with torch.autocast("cpu", dtype=dtype):
                loss = workload.loss_fn(model(inputs), targets)
            optimizer.zero_grad()
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                before = scaler.get_scale()
                scaler.update()
                if skipped is not None and scaler.get_scale() < before:
                    skipped.append(len(losses) + 1)
            losses.append(loss.item())
            if len(losses) == steps:
                break
    return np.array(losses)


def sweep(precision: str, engine: str = "auto", factory=dropout_workload):
    specs = [TrialSpec(i, lr, 0, STEPS, 10, ScheduleConfig()) for i, lr in enumerate((0.01, 0.03))]
    job = TrialJob(factory, OptimizerConfig(name="momentum"), DetectConfig(), "cpu", engine=engine)
    import dataclasses

    return sorted(run_trials(specs, dataclasses.replace(job, precision=precision)), key=lambda r: r.spec.lr)


def test_bf16_runs_batched_and_matches_the_trial_alone_and_a_plain_autocast_loop():
    batched, alone = sweep("bf16"), sweep("bf16", "sequential")
    assert all(r.engine == "vectorized" and r.fallback is None for r in batched)
    for got, one in zip(batched, alone, strict=True):
        # bfloat16 keeps 8 bits of mantissa: a batched and a lone matmul round differently there
        np.testing.assert_allclose(got.steps.train_loss, one.steps.train_loss, rtol=2e-3)
        np.testing.assert_allclose(one.steps.train_loss, plain_loop(dropout_workload(0), one.spec.lr, STEPS, "bf16"))
        assert got.status == one.status and got.skipped_steps is None


def test_bf16_is_not_fp32():
    """The autocast is really on: bf16 losses differ from fp32's in their last digits."""
    bf16, fp32 = sweep("bf16", "sequential"), sweep("fp32", "sequential")
    assert not np.array_equal(bf16[0].steps.train_loss, fp32[0].steps.train_loss)
    np.testing.assert_allclose(bf16[0].steps.train_loss, fp32[0].steps.train_loss, rtol=2e-2)


def loud_workload(seed: int):
    """A loss a thousand times larger: scaled by fp16's GradScaler (2**16 at first), its
    gradients overflow float16 until the scale has halved enough: the first steps are skipped."""
    import dataclasses

    base = dropout_workload(seed)
    return dataclasses.replace(
        base, loss_fn=lambda outputs, targets: 1000 * torch.nn.functional.cross_entropy(outputs, targets)
    )


def test_fp16_scales_the_loss_counts_skipped_steps_and_runs_one_trial_at_a_time():
    results = sweep("fp16", factory=loud_workload)
    assert all(r.engine == "sequential" and "fp16" in r.fallback for r in results)
    for result in results:
        skipped: list[int] = []
        plain = plain_loop(loud_workload(0), result.spec.lr, STEPS, "fp16", skipped)[: result.steps_run]
        np.testing.assert_allclose(result.steps.train_loss, plain, rtol=1e-6)
        # the steps whose gradients overflowed, as the plain loop's scaler skipped them
        assert result.skipped_steps == len([step for step in skipped if step <= result.steps_run]) > 0


@pytest.mark.parametrize("value", ["fp64", "half", 16])
def test_a_bad_precision_names_the_key(write_config, value):
    from typer.testing import CliRunner

    from stabsweep.cli import app

    config = write_config(f"name: t\nworkload: {{name: mlp}}\ntrain: {{precision: {value}}}\n")
    result = CliRunner().invoke(app, ["lr", str(config)])
    assert result.exit_code == 2 and "train.precision" in result.output and "Traceback" not in result.output
