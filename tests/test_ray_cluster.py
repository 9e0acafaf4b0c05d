"""The Ray executor on a multi-node cluster: a head and two worker nodes started here with Ray's
own ``ray.cluster_utils.Cluster``, every node on loopback. The sweep's tasks spread over the
nodes, report their steps while they run, and give the local run's results; a worker node
removed mid-sweep costs nothing: its task runs again on the other node from its checkpoint."""

from __future__ import annotations

import os
import time

import pytest

from .conftest import CONFIGS, needs_ray
from .sweep_files import assert_same_sweep


@pytest.fixture
def cluster(request):
    """A head and worker nodes: by default a head and two workers of one CPU each; a test's
    ``cluster_layout(head_cpus, workers)`` mark says otherwise (``workers``: each one's CPUs)."""
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # Ray's own "this host only" switch (engine/ray_executor.py's connect): every node on 127.0.0.1
    saved = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    mark = request.node.get_closest_marker("cluster_layout")
    head_cpus, workers = mark.args if mark else (1, (1, 1))
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
    try:
        for cpus in workers:
            nodes.add_node(num_cpus=cpus)
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
def test_a_sweep_spreads_over_the_nodes_and_equals_the_local_run(cluster, monkeypatch):
    import ray

    from stabsweep.config.loader import load_config
    from stabsweep.config.schema import RayConfig
    from stabsweep.engine.executors import LocalExecutor
    from stabsweep.engine.ray_executor import PROGRESS_POLL_S, RayExecutor
    from stabsweep.procedures import lr
    from stabsweep.procedures.context import Context, RunOptions
    from stabsweep.report.console import make_console

    config = load_config(CONFIGS / "smoke.yaml", {"execution.ray.address": cluster.address})
    ctx = Context(config, RunOptions(quiet=True), make_console(quiet=True))
    job, specs = ctx.job(), lr.plan(config)
    executor = RayExecutor(RayConfig(address=cluster.address))
    heard, waits, wait = [], [], ray.wait

    def waiting(*args, **kwargs):  # the driver must not block until a task ends: it polls the steps
        waits.append(kwargs.get("timeout"))
        return wait(*args, **kwargs)

    monkeypatch.setattr(ray, "wait", waiting)
    remote = list(executor.run(specs, job, lambda *report: heard.append(report)))
    assert waits and set(waits) == {PROGRESS_POLL_S}
    assert len(ray.nodes()) == 3 and all(n["NodeManagerAddress"] == "127.0.0.1" for n in ray.nodes())
    assert len(set(executor.placements.values())) == 3  # one task per node's CPU: every node ran trials
    # the running tasks' steps came back while they ran, each task's steps in order; a finished
    # task is reported as running nothing
    tasks = {task for *_, task in heard}
    assert len(tasks) == 3
    for task in tasks:
        mine = [(step, length, running) for step, length, running, t in heard if t == task]
        assert any(0 < step < length for step, length, _ in mine)
        assert [step for step, *_ in mine] == sorted(step for step, *_ in mine)
        assert mine[-1][2] == 0
    here = list(LocalExecutor().run(specs, job))
    assert_same_sweep(sweep_frames(remote), sweep_frames(here))


@needs_ray
@pytest.mark.slow
@pytest.mark.cluster_layout(0, (2,))  # both tasks run on the one worker node
def test_a_node_removed_mid_sweep_loses_nothing_and_its_task_resumes_from_its_checkpoint(cluster, tmp_path):
    import threading

    from stabsweep.config.loader import load_config
    from stabsweep.engine.ray_executor import connect
    from stabsweep.procedures import lr
    from stabsweep.procedures.context import Context, RunOptions
    from stabsweep.report.console import make_console

    from .sweep_files import sweep_files

    calm = {"lr_sweep.lrs": [0.01, 0.02, 0.05, 0.1], "train.steps": 3000, "train.eval_every": 1000}

    def sweep_in(executor):
        overrides = {**calm, "execution.executor": executor, "execution.checkpoint_every": 0.2}
        config = load_config(CONFIGS / "smoke.yaml", {**overrides, "execution.ray.address": cluster.address})
        ctx = Context(config, RunOptions(out=tmp_path / executor, quiet=True), make_console(quiet=True))
        store = ctx.store("lr")
        return store, lambda: ctx.run_trials(lr.plan(config), ctx.job(), store, "lr")

    local, run_local = sweep_in("local")
    run_local()
    store, run = sweep_in("ray")
    # The sweep runs in a thread; Ray starts and stops nodes from the main thread only.
    connect(cluster.address)
    done, raised = [], []

    def sweep_thread():
        try:
            done.append(run())
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the test's thread
            raised.append(exc)

    sweep = threading.Thread(target=sweep_thread)
    sweep.start()
    while not list(store.checkpoints.glob("*.ckpt")):  # a task has saved a checkpoint...
        assert sweep.is_alive(), raised
        time.sleep(0.05)
    # ...the node running the tasks goes (its tasks wait for a node with CPUs), and a fresh one joins
    cluster.remove_node(next(iter(cluster.worker_nodes)), allow_graceful=False)
    cluster.add_node(num_cpus=2)
    sweep.join(timeout=600)
    assert not sweep.is_alive(), "the retried tasks never finished"
    if raised:
        raise raised[0]
    [results] = done
    assert sorted(r.spec.trial_id for r in results) == [0, 1, 2, 3]  # each trial once
    resumed = [r for r in results if any("from a checkpoint" in note for note in r.notes)]
    assert len(resumed) >= 2  # a task (two trials) continued from its checkpoint on the new node
    assert all(r.status.value == "ok" for r in results)
    assert not list(store.checkpoints.glob("*.ckpt"))  # finished: nothing left to resume
    assert_same_sweep(in_trial_order(sweep_files(store.folder)), in_trial_order(sweep_files(local.folder)))


def in_trial_order(frames):
    """A sweep's files in trial order (each executor writes trials in the order they finish)."""
    return tuple(
        frame.sort_values([c for c in ("trial_id", "step") if c in frame], kind="stable").reset_index(drop=True)
        for frame in frames
    )
