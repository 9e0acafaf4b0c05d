"""``make bench``: the engine's performance targets, as ratios measured in one run.

(a) overhead: one stabsweep trial / the same training as a bare PyTorch loop   target ≤ 1.10
(b) sweep:    the quickstart's 16-rate sweep / one trial                       target ≤ 3.5 (2 CPU cores)
              (one at a time it is about 16; the sequential engine's figure is printed beside it)
(c) ray:      the same 16-trial sweep on the ray executor / on the local one   (no target: Ray's cost)
(ckpt) checkpoints: the sweep with checkpoints at the default interval / without   target ≤ 1.02
(progress) the sweep with its live progress display (on a terminal) / quiet        target ≤ 1.01
(seeds) per trial-step: 8 rates × 4 seeds in one batch / 32 rates × 1 seed          target ≤ 1.25
(layers) the sweep logging per-layer norms every 10 steps / not logging them         target ≤ 1.05
              ((ckpt 1 s) prints the cost of saving every second, beside it)
(models) real models' 8-rate sweeps: vectorized against sequential, one trial and a plain
              loop, and the batch's peak memory (benchmarks/models.py)
(cluster) 1,000 tiny trials through Ray on a 4-node local cluster: the overhead per trial,
              the driver's CPU per trial and the results store's write rate (benchmarks/cluster.py;
              --cluster-runs rounds, 1 by default: a round takes about a minute here)

Beside (b) it prints (b floor): the sweep's arithmetic alone, each step's forward and backward
for the trials still running at that step, written as plain batched matrix products (no
vmap, optimizer, clipping, records or evals) / one trial. No engine built on the same
kernels can go below it on this machine, whatever its overheads. (b GEMMs) keeps only the
floor's matrix products, and the run prints their speed beside one large product's, the most
this machine's matrix products reach.

Every timing runs in this process, on this machine, all of them interleaved in each round and
the rounds repeated (``--runs``, 5 by default). Each ratio is the median of the rounds' own
ratios, and each time the median of its rounds. The sweep includes writing its CSV files, as a real sweep does.
Ratios, seconds, device and machine go to ``runs/bench/bench.csv``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from stabsweep.config.loader import load_config
from stabsweep.procedures import lr as lr_procedure
from stabsweep.procedures.context import Context, RunOptions
from stabsweep.records import TrialJob
from stabsweep.report.console import make_console
from stabsweep.training.common import place_data
from stabsweep.training.sequential import train_trial

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.models and tests.real_models, run as `python benchmarks/bench.py`
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SWEEP = {"lr_sweep.lrs.num": 16}  # 1e-3 … 10, as the quickstart, with 16 rates
BEST_LR = 0.1  # the quickstart's lr*: a trial that trains all its steps


def batches_forever(data: object) -> Iterator[object]:
    """``data`` re-iterated as epochs, as a bare loop would write it."""
    while True:
        yield from data


def bare_loop(job: TrialJob, steps: int, eval_every: int) -> float:
    """The quickstart trial written as plain PyTorch: same model, data, optimizer, evals."""
    device = torch.device(job.device)
    start = time.perf_counter()
    workload = job.factory(0)
    model = workload.model.to(device)
    place_data(workload.train_data, device)
    place_data(workload.eval_data, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=BEST_LR, momentum=0.9)
    batches = batches_forever(workload.train_data)
    for step in range(1, steps + 1):
        inputs, targets = next(batches)
        loss = workload.loss_fn(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == 1:
            with torch.no_grad():
                model.eval()
                eval_loss = sum(workload.loss_fn(model(x), y) * len(x) for x, y in workload.eval_data)
                float(eval_loss)  # the value is read, as the trial reads it
                model.train()
    synchronize(device)
    return time.perf_counter() - start


def arithmetic_floor(job: TrialJob, running: list[int]) -> float:
    """Forward and backward of the quickstart MLP for ``running[s]`` trials at step ``s``, by hand.

    The same data, shapes and float32 kernels as the vectorized engine (``baddbmm`` for the
    stacked linear layers, ReLU, cross-entropy), nothing else; written by hand because it is
    the yardstick, not the tool.
    """
    workload = job.factory(0)
    device = torch.device(job.device)
    model = workload.model.to(device)
    assert all(isinstance(m, torch.nn.Linear | torch.nn.ReLU) for m in model), "the quickstart is Linear/ReLU"
    layers = [m for m in model if isinstance(m, torch.nn.Linear)]
    place_data(workload.train_data, device)
    batches = batches_forever(workload.train_data)
    start = time.perf_counter()
    count = 0
    for trials in running:
        if trials != count:  # the batch was compacted: stack the weights for the trials left
            count = trials
            weights = [m.weight.detach().expand(count, -1, -1).clone().requires_grad_() for m in layers]
            biases = [m.bias.detach().expand(count, 1, -1).clone().requires_grad_() for m in layers]
        inputs, targets = next(batches)
        hidden = inputs.expand(count, -1, -1)
        for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
            hidden = torch.baddbmm(bias, hidden, weight.transpose(1, 2))
            if i < len(layers) - 1:
                hidden = hidden.relu()
        loss = torch.nn.functional.cross_entropy(hidden.flatten(0, 1), targets.repeat(count), reduction="sum")
        torch.autograd.grad(loss / len(targets), weights + biases)
    synchronize(device)
    return time.perf_counter() - start


def sweep_products(job: TrialJob) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The matrix products of one trial-step of the quickstart MLP, as (left, right) shapes:
    per layer the forward product, the weight gradient's and, past the first layer, the input
    gradient's."""
    workload = job.factory(0)
    batch = len(next(iter(workload.train_data))[1])
    layers = [(m.in_features, m.out_features) for m in workload.model if isinstance(m, torch.nn.Linear)]
    products = [((batch, i), (i, o)) for i, o in layers]  # forward
    products += [((o, batch), (batch, i)) for i, o in layers]  # weight gradients
    products += [((batch, o), (o, i)) for i, o in layers[1:]]  # input gradients
    return products


def matmul_floor(job: TrialJob, running: list[int]) -> float:
    """The matrix products of :func:`arithmetic_floor` alone, as ``bmm`` over the trials still
    running at each step. Everything else a step does (bias, ReLU, cross-entropy, the
    optimizer, records) is left out."""
    device = torch.device(job.device)
    products = sweep_products(job)
    operands: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    start = time.perf_counter()
    for trials in running:
        if trials not in operands:
            operands[trials] = [
                (torch.randn(trials, *a, device=device), torch.randn(trials, *b, device=device)) for a, b in products
            ]
        for left, right in operands[trials]:
            torch.bmm(left, right)
    synchronize(device)
    return time.perf_counter() - start


def peak_gflops(device: torch.device) -> float:
    """The device's float32 matrix-product speed on large products: what GEMMs can reach."""
    size = 1024 if device.type == "cpu" else 8192
    left, right = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    left @ right
    synchronize(device)
    start = time.perf_counter()
    for _ in range(10):
        left @ right
    synchronize(device)
    return 10 * 2 * size**3 / (time.perf_counter() - start) / 1e9


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def timed_rounds(runs: int, *fns: Callable[[], float]) -> list[list[float]]:
    """Each function's time in each of ``runs`` rounds, the functions interleaved per round."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for i, fn in enumerate(fns):
            times[i].append(fn())
    return times


def ratio_row(key: str, name: str, num: list[float], den: list[float], target: float | None = None) -> tuple:
    """A ratio as the median over rounds of the round's own ratio (both sides timed moments
    apart, so a machine that changes speed between rounds moves both), with median seconds."""
    ratio = statistics.median(n / d for n, d in zip(num, den, strict=True))
    return key, name, ratio, target, statistics.median(num), statistics.median(den)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="rounds of every timing (medians)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-ray", action="store_true", help="skip (c)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--steps", type=int, default=None, help="train.steps (default: the quickstart's 1000)")
    parser.add_argument("--no-models", action="store_true", help="skip the real models' rows")
    parser.add_argument("--no-cluster", action="store_true", help="skip the 4-node Ray cluster's rows")
    parser.add_argument("--cluster-trials", type=int, default=1000, help="trials per side of the cluster rows")
    parser.add_argument("--cluster-runs", type=int, default=1, help="rounds of the cluster rows")
    parser.add_argument("--model-steps", type=int, default=None, help="steps of the real models' trials")
    args = parser.parse_args()
    console = Console(stderr=True)
    scratch = Path(tempfile.mkdtemp(prefix="stabsweep-bench-"))

    def context(live: bool = False, rates: int = 16, seeds: int = 1, layers: bool = False, **execution: str) -> Context:
        overrides = {**SWEEP, "device": args.device, **{f"execution.{k}": v for k, v in execution.items()}}
        overrides.update({"lr_sweep.lrs.num": rates, "lr_sweep.seeds": seeds, "train.log_layers": layers})
        if args.steps:
            overrides["train.steps"] = args.steps
        config = load_config(QUICKSTART, overrides)
        if live:  # the live display a terminal shows, drawn into memory
            options = RunOptions(out=scratch, force=True, quiet=False)
            return Context(config, options, Console(file=io.StringIO(), force_terminal=True, width=120))
        options = RunOptions(out=scratch, force=True, quiet=True)
        return Context(config, options, make_console(quiet=True))

    local = context()
    job = local.job()
    config = local.config
    steps, eval_every = config.train.steps, config.train.eval_every
    specs = lr_procedure.plan(config)
    one = specs[0]  # its settings, at lr* (BEST_LR)

    def trial() -> float:
        start = time.perf_counter()
        result = train_trial(replace(one, lr=BEST_LR), job.factory, job.optimizer, job.detect, torch.device(job.device))
        assert result.steps_run == steps, result.reason
        return time.perf_counter() - start

    steps_run: list[int] = []

    def sweep(ctx: Context, per_trial_step: bool = False) -> Callable[[], float]:
        """The sweep's seconds, or its seconds per 1000 trial-steps."""
        plan = lr_procedure.plan(ctx.config)

        def run() -> float:
            start = time.perf_counter()
            results = ctx.run_trials(plan, ctx.job(), ctx.store("lr"), "bench")
            seconds = time.perf_counter() - start
            if not per_trial_step:
                steps_run[:] = [r.steps_run for r in results]
                return seconds
            return 1000 * seconds / sum(r.steps_run for r in results)

        return run

    console.print(f"device {job.device}; {os.cpu_count()} CPU cores; torch {torch.__version__}; {args.runs} runs each")
    sweep(local)()  # a first sweep warms up, and says which trials run how long (for the floor)
    running = [sum(n > step for n in steps_run) for step in range(max(steps_run))]
    console.print(f"the 16-rate sweep ran {sum(steps_run):,} trial-steps ({len(steps_run)} trials)")
    # All sides in the same rounds, so a machine that speeds up or slows down shifts them alike.
    gemm_flops = sum(2 * a[0] * a[1] * b[1] for a, b in sweep_products(job)) * sum(running)
    seeds_ctx, rates_ctx = context(rates=8, seeds=4), context(rates=32)
    timings = timed_rounds(
        args.runs,
        lambda: bare_loop(job, steps, eval_every),
        trial,
        sweep(local),
        lambda: arithmetic_floor(job, running),
        lambda: matmul_floor(job, running),
        sweep(context(engine="sequential")),
        sweep(context(checkpoint_every=0)),
        sweep(context(checkpoint_every=1)),
        sweep(context(live=True)),
        sweep(seeds_ctx, per_trial_step=True),
        sweep(rates_ctx, per_trial_step=True),
        sweep(context(layers=True)),
    )
    bare_s, trial_s, sweep_s, floor_s, gemm_s, sequential_s, unsaved_s, saving_s, live_s, seeds_s, rates_s, layers_s = (
        timings
    )
    peak = peak_gflops(torch.device(job.device))
    gemm_gflops = gemm_flops / statistics.median(gemm_s) / 1e9
    console.print(
        f"the sweep's matrix products: {gemm_flops / 1e9:.0f} GFLOP at {gemm_gflops:.0f} GFLOP/s; "
        f"one large product runs at {peak:.0f} GFLOP/s here"
    )
    rows = [
        ratio_row("a", "one trial / bare PyTorch loop", trial_s, bare_s, target=1.10),
        ratio_row("b", "16-rate sweep / one trial", sweep_s, trial_s, target=3.5),
        ratio_row("b floor", "the sweep's fwd+bwd alone, by hand / one trial", floor_s, trial_s),
        ratio_row("b GEMMs", "the sweep's matrix products alone / one trial", gemm_s, trial_s),
        ratio_row("b'", "16-rate sweep, sequential engine / one trial", sequential_s, trial_s),
        ratio_row("ckpt", "sweep, checkpoints every 300 s (default) / none", sweep_s, unsaved_s, target=1.02),
        ratio_row("ckpt 1 s", "sweep, a checkpoint every second / none", saving_s, unsaved_s),
        ratio_row("progress", "sweep with live progress on a terminal / quiet", live_s, sweep_s, target=1.01),
        ratio_row("seeds", "s per 1000 trial-steps: 8 rates × 4 seeds / 32 × 1", seeds_s, rates_s, target=1.25),
        ratio_row("layers", "sweep logging per-layer norms every 10 steps / not", layers_s, sweep_s, target=1.05),
    ]
    if not args.no_ray:
        ray_ctx = context(executor="ray")
        start = time.perf_counter()
        from stabsweep.engine.ray_executor import connect

        connect(None)
        ray_start_s = time.perf_counter() - start
        sweep_s_again, ray_s = timed_rounds(args.runs, sweep(local), sweep(ray_ctx))
        rows.append(ratio_row("c", "16-rate sweep, ray executor / local", ray_s, sweep_s_again))
        console.print(f"(a local Ray took {ray_start_s:.1f} s to start; not in (c))")

    if not args.no_ray and not args.no_cluster:
        from benchmarks import cluster

        rows += cluster.rows(args.cluster_runs, args.cluster_trials, console)

    if not args.no_models:
        from benchmarks import models

        rows += models.rows(args.runs, job.device, console, args.model_steps)
        at_least = models.AT_LEAST
    else:
        at_least = set()

    table = Table("", "ratio", "value", "target", "seconds", "over seconds", title="stabsweep bench")
    for key, name, ratio, target, num, den in rows:
        floor = key in at_least  # a speed-up: the target is a floor
        met = target is not None and (ratio >= target if floor else ratio <= target)
        verdict = "" if target is None else (" ✓" if met else " ✗ short of target" if floor else " ✗ over target")
        shown = "" if target is None else f"{'≥' if floor else '≤'} {target}"
        table.add_row(key, name, f"{ratio:.2f}{verdict}", shown, f"{num:.2f}", f"{den:.2f}")
    Console(width=None if sys.stdout.isatty() else 160).print(table)

    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    if job.device.startswith("cuda"):
        machine += f", {torch.cuda.get_device_name(torch.device(job.device))}"
    frame = pd.DataFrame(
        [
            {
                "id": key,
                "ratio_name": name,
                "ratio": round(ratio, 3),
                "target": target,
                "target_kind": None if target is None else ("at least" if key in at_least else "at most"),
                "seconds": round(num, 3),
                "over_seconds": round(den, 3),
                "device": job.device,
                "machine": machine,
                "sweep_gemm_gflops": round(gemm_gflops, 1),
                "peak_gemm_gflops": round(peak, 1),
                "torch": torch.__version__,
                "runs": args.runs,
                "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            for key, name, ratio, target, num, den in rows
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "bench.csv", index=False)
    console.print(f"wrote {args.out / 'bench.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
