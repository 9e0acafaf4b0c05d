"""The Ray executor on a multi-node cluster: a head and two worker nodes started here with Ray's
own ``ray.cluster_utils.Cluster``, every node on loopback. The sweep's tasks spread over the
nodes and its results equal the local run's."""

from __future__ import annotations

import os

import pytest

from .conftest import CONFIGS, needs_ray
from .sweep_files import assert_same_sweep


@pytest.fixture
def cluster():
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # Ray's own "this host only" switch (engine/ray_executor.py's connect): every node on 127.0.0.1
    saved = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(2):
            nodes.add_node(num_cpus=1)
        nodes.wait_for_nodes()
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = saved[0]
        if saved[1] is None:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        else:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = saved[1]


def sweep_frames(results):
    import pandas as pd

    from stabsweep.results.store import batch_position

    rows = sorted(results, key=lambda r: r.spec.trial_id)
    trials = pd.DataFrame([r.row() for r in rows]).drop(columns=["wall_seconds"])
    steps = pd.concat(
        [
            pd.DataFrame(
                {
                    "trial_id": r.spec.trial_id,
                    "step": range(1, r.steps_run + 1),
                    "lr": r.steps.lr,
                    "train_loss": r.steps.train_loss,
                    "grad_norm": r.steps.grad_norm,
                    **batch_position(r.steps_run, None),
                }
            )
            for r in rows
        ],
        ignore_index=True,
    )
    evals = pd.DataFrame([{"trial_id": r.spec.trial_id, **e} for r in rows for e in r.evals])
    return trials, steps, evals


@needs_ray
@pytest.mark.slow
def test_a_sweep_spreads_over_the_nodes_and_equals_the_local_run(cluster):
    import ray

    from stabsweep.config.loader import load_config
    from stabsweep.config.schema import RayConfig
    from stabsweep.engine.executors import LocalExecutor
    from stabsweep.engine.ray_executor import RayExecutor
    from stabsweep.procedures import lr
    from stabsweep.procedures.context import Context, RunOptions
    from stabsweep.report.console import make_console

    config = load_config(CONFIGS / "smoke.yaml", {"execution.ray.address": cluster.address})
    ctx = Context(config, RunOptions(quiet=True), make_console(quiet=True))
    job, specs = ctx.job(), lr.plan(config)
    executor = RayExecutor(RayConfig(address=cluster.address))
    remote = list(executor.run(specs, job))
    assert len(ray.nodes()) == 3 and all(n["NodeManagerAddress"] == "127.0.0.1" for n in ray.nodes())
    assert len(set(executor.placements.values())) == 3  # one task per node's CPU: every node ran trials
    here = list(LocalExecutor().run(specs, job))
    assert_same_sweep(sweep_frames(remote), sweep_frames(here))
