"""``make bench``'s scale rows: 1,000+ trials of a tiny model through the Ray executor on a
4-node cluster started here with Ray's own ``ray.cluster_utils.Cluster`` (every node on
loopback, one CPU each), against the same trials on the local executor.

Each trial is its own Ray task (the sequential engine: what a sweep spread over many GPUs
does), so every figure is per trial and per task:

(cluster)        the sweep's seconds: Ray on 4 local nodes / the local executor   (no target)
(cluster ms)     Ray's overhead per trial, ms: the task slots' time not spent in a trial,
                 (wall × 4 slots − Σ trials' own seconds) / trials: handing the task
                 out, starting it, shipping its result back, writing it       (no target)
(local ms)       the same for the local executor (one slot), for comparison   (no target)
(driver ms)      the driver's CPU per trial on Ray, ms: what bounds how many trials/s one
                 driver can hand out and write back                           (no target)
(store)          the results store's write rate, trials/s: the Ray run's results written
                 again into a fresh store, ``finalize`` included               (no target)

On this 2-core machine the 4 nodes share 2 cores, so (cluster) mixes Ray's cost with two
cores' parallelism and each trial's own seconds include waiting for a core; (driver ms) and
(store) are the figures a large sweep's driver lives by (docs/architecture.md, "A sweep of
100,000 trials"). The sides alternate, ``runs`` rounds.
"""

from __future__ import annotations

import atexit
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console

from stabsweep.config.loader import load_config
from stabsweep.procedures import lr as lr_procedure
from stabsweep.procedures.context import Context, RunOptions
from stabsweep.report.console import make_console

ROOT = Path(__file__).resolve().parents[1]
NODES = 4
TINY = {  # the smoke MLP, a few steps: the trials are short, so per-trial costs show
    "train.steps": 20,
    "train.eval_every": 20,
    "execution.engine": "sequential",
}


def cluster() -> object:
    """A head and ``NODES - 1`` workers of one CPU each, on loopback (tests/test_ray_cluster.py)."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    ray_constants.ENABLE_RAY_CLUSTER = False  # Ray's "this host only" rule (engine/ray_executor.py)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(NODES - 1):
        nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    return nodes


def rows(runs: int, trials: int, console: Console) -> list[tuple]:
    """The scale rows (``bench.ratio_row``'s shape), ``trials`` trials per side and round."""
    import ray

    from stabsweep.results.store import ResultsStore

    if ray.is_initialized():
        ray.shutdown()
    start = time.perf_counter()
    nodes = cluster()
    console.print(f"a {NODES}-node local Ray cluster started in {time.perf_counter() - start:.1f} s")
    scratch = Path(tempfile.mkdtemp(prefix="stabsweep-bench-cluster-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    grid = {"lr_sweep.lrs": {"min": 1e-3, "max": 0.1, "num": trials}}

    def context(executor: str) -> Context:
        overrides = {**TINY, **grid, "execution.executor": executor, "execution.ray.address": nodes.address}
        config = load_config(ROOT / "configs" / "smoke.yaml", overrides)
        return Context(config, RunOptions(out=scratch / executor, force=True, quiet=True), make_console(quiet=True))

    def sweep(executor: str) -> tuple[float, float, float, list]:
        """The sweep's wall seconds, the driver's CPU seconds, the overhead per trial (ms)."""
        ctx = context(executor)
        plan = lr_procedure.plan(ctx.config)
        wall, cpu = time.perf_counter(), time.process_time()
        results = ctx.run_trials(plan, ctx.job(), ctx.store("lr"), "bench")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert len(results) == trials and all(r.steps_run for r in results)
        slots = NODES if executor == "ray" else 1
        overhead = (wall * slots - sum(r.wall_seconds for r in results)) / trials * 1000
        return wall, cpu, overhead, results

    try:
        sweep("ray")  # the workers start and import torch once: not a per-trial cost
        ray_s, local_s, driver_s, store_s, ray_ms, local_ms = [], [], [], [], [], []
        for _ in range(runs):
            wall, _, overhead, _ = sweep("local")
            local_s.append(wall)
            local_ms.append(overhead)
            wall, cpu, overhead, results = sweep("ray")
            ray_s.append(wall)
            driver_s.append(cpu)
            ray_ms.append(overhead)
            folder = scratch / "store"
            store = ResultsStore.open(folder, context("ray").config, force=True)
            start = time.perf_counter()
            for result in results:
                store.write(result)
            store.finalize()
            store_s.append(time.perf_counter() - start)
    finally:
        ray.shutdown()
        nodes.shutdown()
    median = statistics.median
    console.print(
        f"{trials:,} trials of {TINY['train.steps']} steps, one Ray task each, on {NODES} nodes: "
        f"{median(ray_s):.1f} s on Ray, {median(local_s):.1f} s on the local executor"
    )
    return [
        ("cluster", f"{trials:,}-trial sweep: Ray on {NODES} local nodes / local", median(
            r / loc for r, loc in zip(ray_s, local_s, strict=True)
        ), None, median(ray_s), median(local_s)),
        ("cluster ms", f"Ray's overhead per trial, ms ({NODES} slots' time outside trials)", median(ray_ms), None,
         median(ray_s), float(trials)),
        ("local ms", "the local executor's overhead per trial, ms", median(local_ms), None,
         median(local_s), float(trials)),
        ("driver ms", "the driver's CPU per trial on Ray, ms", median(c / trials * 1000 for c in driver_s), None,
         median(driver_s), float(trials)),
        ("store", "results store writes, trials/s (finalize included)", median(trials / s for s in store_s), None,
         float(trials), median(store_s)),
    ]  # fmt: skip


def main() -> int:
    """``python benchmarks/cluster.py [--trials N] [--runs K]``: the cluster rows alone."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    console = Console(stderr=True)
    for key, name, value, _, seconds, over in rows(args.runs, args.trials, console):
        print(f"{key}\t{value:.3f}\t{name} ({seconds:.3f} / {over:.3f})")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
