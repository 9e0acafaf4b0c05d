"""The vectorized engine: a trial in a batch is the same trial run alone.

Equivalence is per-step training loss within 1e-5 relative over the first 20 steps (the
issue's bar), for every optimizer, with warmup, a schedule and clipping in the same batch.
Rates are each optimizer's usual range: at rates where training is chaotic (RMSprop at 1e-2
on this MLP), any two float32 runs drift apart from their first rounding difference, alone
or batched, so no bar holds there.
"""

from __future__ import annotations

import textwrap
import warnings

import numpy as np
import pytest
import torch

from stabsweep import Workload
from stabsweep.config.schema import ClipConfig, DetectConfig, OptimizerConfig, ScheduleConfig, WorkloadConfig
from stabsweep.engine.runner import plan_batches, run_trials
from stabsweep.optim.optimizers import OPTIMIZERS
from stabsweep.procedures.context import engine_notes
from stabsweep.records import TrialJob, TrialSpec, TrialStatus
from stabsweep.training import vectorized
from stabsweep.training.sequential import train_trial
from stabsweep.training.vectorized import TrialBatch
from stabsweep.training.vmap_support import why_not_vectorizable
from stabsweep.workloads import resolve_factory
from tests.reference import EvalHead, dropout_workload, eval_head_workload, plain_losses, sometimes_extra

MLP = resolve_factory(WorkloadConfig(name="mlp", args={"hidden": 32, "depth": 2}, batch_size=32))
CPU = torch.device("cpu")
DETECT = DetectConfig()
SGD_FAMILY = {"sgd", "momentum", "nesterov"}


def spec(trial_id, lr, steps=30, **kwargs):
    kwargs.setdefault("schedule", ScheduleConfig())
    return TrialSpec(trial_id, lr, seed=0, steps=steps, eval_every=10, **kwargs)


def alone(trial, optimizer, factory=MLP, device=CPU):
    return train_trial(trial, factory, optimizer, DETECT, device)


def assert_same_trial(batched, single, steps=20, rtol=1e-5):
    assert batched.status == single.status and batched.steps_run == single.steps_run
    n = min(steps, single.steps_run)
    np.testing.assert_allclose(batched.steps.train_loss[:n], single.steps.train_loss[:n], rtol=rtol)
    # Norms are sums over every gradient entry: more sensitive than the loss, so a looser bar.
    np.testing.assert_allclose(batched.steps.grad_norm[:n], single.steps.grad_norm[:n], rtol=100 * rtol)
    np.testing.assert_allclose(batched.steps.clip_threshold[:n], single.steps.clip_threshold[:n], rtol=100 * rtol)
    np.testing.assert_array_equal(batched.steps.lr, single.steps.lr)
    # Evaluated at the same steps as alone (not also where another trial of the batch ended).
    assert [e["step"] for e in batched.evals] == [e["step"] for e in single.evals]
    early = [i for i, e in enumerate(single.evals) if e["step"] <= n]
    batched_early, single_early = ([evals[i]["eval_loss"] for i in early] for evals in (batched.evals, single.evals))
    np.testing.assert_allclose(batched_early, single_early, rtol=rtol)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_batched_trial_matches_the_same_trial_alone(name):
    optimizer = OptimizerConfig(name=name, **({"weight_decay": 0.01} if name in ("adamw", "sgd") else {}))
    rates = (0.01, 0.1) if name in SGD_FAMILY else (1e-4, 1e-3)
    trials = [
        spec(0, rates[0]),
        spec(1, rates[1], warmup_steps=5, schedule=ScheduleConfig(name="cosine")),
        spec(2, rates[1], clip=ClipConfig(threshold=0.2)),
        spec(3, rates[0] * 3, warmup_steps=10, clip=ClipConfig(threshold=2.0)),
    ]
    results = {r.spec.trial_id: r for r in TrialBatch(trials, MLP, optimizer, DETECT, CPU).run()}
    assert sorted(results) == [0, 1, 2, 3]
    for trial in trials:
        assert_same_trial(results[trial.trial_id], alone(trial, optimizer))
    assert results[2].steps.clipped.any() and not results[0].steps.clipped.any()


def test_each_trial_takes_the_step_of_its_own_rate_exactly():
    rates = [1e-5, 1e-4, 0.5, 3.0]
    batch = TrialBatch([spec(i, lr) for i, lr in enumerate(rates)], MLP, OptimizerConfig(name="sgd"), DETECT, CPU)
    before = batch.flat.detach().double()
    grad = torch.randn(batch.flat.shape, generator=torch.Generator().manual_seed(0))
    batch.flat_grad.copy_(grad)
    batch._step(torch.tensor(rates))
    # Plain SGD moves by −lr·g: the rate each trial took is the least-squares fit of its move
    # on −g (float32 rounding of each weight averages out over the row; a bias does not).
    moved, g = batch.flat.detach().double() - before, grad.double()
    taken = -(moved * g).sum(1) / (g * g).sum(1)
    np.testing.assert_allclose(taken.numpy(), rates, rtol=2e-4)


def test_adagrad_lr_decay_is_still_linear_in_the_rate():
    optimizer = OptimizerConfig(name="adagrad", lr_decay=0.05)
    trials = [spec(0, 1e-3), spec(1, 1e-2)]
    for result in TrialBatch(trials, MLP, optimizer, DETECT, CPU).run():
        assert_same_trial(result, alone(result.spec, optimizer))


@pytest.mark.parametrize(
    "clips",
    [
        [ClipConfig(percentile=50, window=8), ClipConfig(percentile=90, window=20)],
        [ClipConfig(zscore=1.5, warmup=3), ClipConfig(zscore=2.5, warmup=5, ema_decay=0.9)],
    ],
)
def test_adaptive_clipping_per_trial(clips):
    optimizer = OptimizerConfig(name="momentum")
    trials = [spec(i, 0.1, clip=clip) for i, clip in enumerate(clips)]
    for result in TrialBatch(trials, MLP, optimizer, DETECT, CPU).run():
        assert result.steps.clipped.any()
        assert_same_trial(result, alone(result.spec, optimizer))


def test_diverged_and_finished_trials_leave_the_batch_at_once():
    optimizer = OptimizerConfig(name="momentum")
    trials = [spec(0, 0.05, steps=40), spec(1, 50.0, steps=40), spec(2, 0.05, steps=25)]
    batch = TrialBatch(trials, MLP, optimizer, DETECT, CPU)
    results = list(batch.run())
    assert [r.spec.trial_id for r in results] == [1, 2, 0]  # diverged first, then the short one, the long one
    assert results[0].status is TrialStatus.DIVERGED and results[0].steps_run < 10
    assert [r.steps_run for r in results[1:]] == [25, 40]
    for result in results:
        assert_same_trial(result, alone(result.spec, optimizer))
    assert batch.steps_done == 40 and batch.flat.shape[0] == 0  # every trial's rows were cut out
    assert all(p.shape[0] == 0 for p in batch.params.values())
    assert batch.optimizer.state[batch.flat]["momentum_buffer"].shape[0] == 0  # and its optimizer state


def test_chunked_sync_gives_the_records_of_a_batch_judged_every_step(monkeypatch):
    """The GPU path reads losses every few steps; a trial diverged inside a chunk keeps
    training in the batch until the read, but nothing of it past its diverged step survives."""
    optimizer = OptimizerConfig(name="momentum")
    trials = [spec(0, 0.05, steps=70), spec(1, 50.0, steps=70), spec(2, 0.05, steps=45)]  # eval every 10
    per_step = {r.spec.trial_id: r for r in TrialBatch(trials, MLP, optimizer, DETECT, CPU).run()}
    monkeypatch.setattr(vectorized, "CPU_SYNC_EVERY", 16)
    batch = TrialBatch(trials, MLP, optimizer, DETECT, CPU)
    assert batch.sync_every == 16
    chunked = {r.spec.trial_id: r for r in batch.run()}
    assert per_step[1].status is TrialStatus.DIVERGED and per_step[1].diverged_step < 16
    for trial_id, result in chunked.items():
        expected = per_step[trial_id]
        assert (result.status, result.steps_run, result.diverged_step) == (
            expected.status,
            expected.steps_run,
            expected.diverged_step,
        )
        np.testing.assert_array_equal(result.steps.train_loss, expected.steps.train_loss)
        np.testing.assert_array_equal(result.steps.grad_norm, expected.steps.grad_norm)
        assert result.evals == expected.evals


def test_weights_are_laid_out_as_their_gradients_come_back_so_the_copy_is_straight():
    batch = TrialBatch([spec(0, 0.05, steps=3), spec(1, 0.05, steps=6)], MLP, OptimizerConfig(name="adam"), DETECT, CPU)
    runs = batch.run()
    next(runs)  # the short trial's result; the long one is still in the batch
    loss = batch.losses_of(batch.params, batch.row_shared, batch.shared, next(iter(batch.workload.train_data)))
    grads = torch.autograd.grad(loss.sum(), list(batch.params.values()))
    assert any(not g.is_contiguous() for g in grads)  # a Linear weight's gradient is transposed under vmap
    for view, grad in zip(batch.grad_views, grads, strict=True):
        assert view.stride()[1:] == grad.stride()[1:]  # within a trial's row, the same order
    assert [r.steps_run for r in runs] == [6]


def test_results_carry_the_diverged_step_and_all_their_evals():
    optimizer = OptimizerConfig(name="momentum")
    trials = [spec(0, 0.05), spec(1, 50.0)]
    for result in run_trials(trials, TrialJob(MLP, optimizer, DETECT, "cpu")):
        single = alone(result.spec, optimizer)
        assert result.engine == "vectorized" and result.diverged_step == single.diverged_step
        assert [e["step"] for e in result.evals] == [e["step"] for e in single.evals]
        np.testing.assert_allclose(
            [e["eval_loss"] for e in result.evals], [e["eval_loss"] for e in single.evals], rtol=1e-4
        )


def test_batches_group_by_eval_cadence_and_clip_kind_and_mix_seeds():
    trials = [
        spec(0, 0.1),
        spec(1, 0.2, clip=ClipConfig(threshold=1.0)),  # a fixed threshold shares a batch with no clipping
        spec(2, 0.3, clip=ClipConfig(percentile=90)),
        TrialSpec(3, 0.1, seed=1, steps=30, eval_every=10, schedule=ScheduleConfig()),
        spec(4, 0.4),
    ]
    assert [[t.trial_id for t in b] for b in plan_batches(trials, max_batch=64)] == [[0, 1, 3, 4], [2]]
    assert [len(b) for b in plan_batches([spec(i, 0.1) for i in range(5)], max_batch=2)] == [2, 2, 1]


def test_weights_of_several_dtypes_cannot_share_a_row():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2).double())
    assert "mix dtypes (float32, float64)" in why_not_vectorizable(model)
    assert why_not_vectorizable(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))) is None


def test_batchnorm_runs_in_the_batch_with_each_trials_running_statistics():
    cnn = resolve_factory(WorkloadConfig(name="cnn", args={"channels": 4}, batch_size=16))
    assert why_not_vectorizable(cnn(0).model) is None
    optimizer = OptimizerConfig(name="momentum")
    results = list(run_trials([spec(0, 0.01, steps=5), spec(1, 0.1, steps=5)], TrialJob(cnn, optimizer, DETECT, "cpu")))
    assert [r.engine for r in results] == ["vectorized", "vectorized"] and all(r.fallback is None for r in results)
    for result in results:
        assert_same_trial(result, alone(result.spec, optimizer, cnn))


def test_data_dependent_control_flow_falls_back(tmp_path):
    path = tmp_path / "branchy.py"
    path.write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn
            from stabsweep import Workload
            from stabsweep.workloads.base import TensorBatches
            from stabsweep.workloads.digits import digits_split

            class Branchy(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

                def forward(self, x):
                    out = self.net(x)
                    return out if out.sum() > 0 else -out  # a branch on a value: vmap cannot batch it

            def build(seed, batch_size=32):
                torch.manual_seed(seed)
                x, y, _, _ = digits_split()
                return Workload(Branchy(), TensorBatches(x, y, batch_size, seed=seed), loss_fn=nn.CrossEntropyLoss())
            """
        )
    )
    factory = resolve_factory(WorkloadConfig(factory=f"{path}:build"))
    results = list(
        run_trials([spec(0, 0.01, steps=5), spec(1, 0.1, steps=5)], TrialJob(factory, OptimizerConfig(), DETECT, "cpu"))
    )
    assert all(r.engine == "sequential" and "data-dependent control flow" in r.fallback for r in results)
    assert all(r.status is not TrialStatus.FAILED for r in results)


class SequenceClassifier(torch.nn.Module):
    """A layer over sequences of 4 steps of 8 features, then a linear head."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        if kind == "lstm":
            self.layer = torch.nn.LSTM(8, 8, batch_first=True)
        else:
            self.layer = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, inputs):
        if self.kind == "lstm":
            return self.head(self.layer(inputs)[0][:, -1])
        return self.head(self.layer(inputs, inputs, inputs, need_weights=False)[0].mean(1))


@pytest.mark.parametrize(
    ("kind", "engine"),
    [("lstm", "sequential"), ("attention", "vectorized")],  # vmap has no rule for LSTM; attention is batched
)
def test_ops_without_a_batching_rule(kind, engine):
    def build(seed):
        base = dropout_workload(seed)
        torch.manual_seed(seed)
        sequences = [(inputs.view(-1, 4, 2).repeat(1, 1, 4), targets) for inputs, targets in base.train_data]
        return Workload(SequenceClassifier(kind), sequences, loss_fn=torch.nn.CrossEntropyLoss())

    optimizer = OptimizerConfig(name="adam")
    with warnings.catch_warnings(record=True) as raw:
        warnings.simplefilter("always")
        results = list(run_trials([spec(0, 1e-3), spec(1, 1e-2)], TrialJob(build, optimizer, DETECT, "cpu")))
    for result in results:
        assert result.engine == engine and result.status is not TrialStatus.FAILED
        assert_same_trial(result, alone(result.spec, optimizer, build))
    if engine == "sequential":
        assert all("Batching rule not implemented for aten::lstm" in r.fallback for r in results)
    else:  # the CPU's fused attention kernel has no batching rule: the batch asks for the math form, batched
        assert all(not r.looped_ops for r in results)
        assert not [w for w in raw if "performance drop" in str(w.message)]


def test_a_looped_op_is_told_in_one_line_and_other_warnings_pass():
    class Warns(torch.nn.Module):  # weight_norm's op has no batching rule: vmap loops over it
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(8, 3))

        def forward(self, inputs):
            warnings.warn("the model's own warning", UserWarning, stacklevel=1)
            return self.layer(inputs.mean(1))

    def build(seed):
        base = dropout_workload(seed)
        torch.manual_seed(seed)
        sequences = [(inputs.view(-1, 4, 2).repeat(1, 1, 4), targets) for inputs, targets in base.train_data]
        return Workload(Warns(), sequences, loss_fn=torch.nn.CrossEntropyLoss())

    job = TrialJob(build, OptimizerConfig(name="adam"), DETECT, "cpu")
    with warnings.catch_warnings(record=True) as raw:
        warnings.simplefilter("always")
        results = list(run_trials([spec(0, 1e-3), spec(1, 1e-2)], job))
    assert [str(w.message) for w in raw if "performance drop" in str(w.message)] == []
    assert "the model's own warning" in {str(w.message) for w in raw}
    notes = engine_notes(results[0])
    assert notes == [
        f"vmap has no batching rule for {results[0].looped_ops[0]}: the batch runs that op trial by trial "
        "(same results, less speed-up)"
    ]
    assert results[0].looped_ops == ("aten::_weight_norm",)


def test_dropout_masks_follow_the_trial_alone(tmp_path):
    path = tmp_path / "dropout.py"
    path.write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn
            from stabsweep import Workload
            from stabsweep.workloads.base import TensorBatches
            from stabsweep.workloads.digits import digits_split

            def build(seed, batch_size=32):
                torch.manual_seed(seed)
                model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))
                x, y, _, _ = digits_split()
                return Workload(model, TensorBatches(x, y, batch_size, seed=seed), loss_fn=nn.CrossEntropyLoss())
            """
        )
    )
    factory = resolve_factory(WorkloadConfig(factory=f"{path}:build"))
    optimizer = OptimizerConfig(name="adam")
    for result in run_trials([spec(0, 1e-3), spec(1, 3e-3)], TrialJob(factory, optimizer, DETECT, "cpu")):
        assert result.engine == "vectorized"
        assert_same_trial(result, alone(result.spec, optimizer, factory))


def test_a_batch_with_dropout_and_evals_is_the_plain_loop_without_evals():
    trials = [spec(0, 1e-3), spec(1, 3e-3)]  # evals at steps 0, 10, 20, 30
    for result in TrialBatch(trials, dropout_workload, OptimizerConfig(name="adam"), DETECT, CPU).run():
        reference = plain_losses(dropout_workload(0), result.spec.lr, 20)
        np.testing.assert_allclose(result.steps.train_loss[:20], reference, rtol=1e-5)


def test_a_parameter_training_never_reaches_is_left_alone_as_in_a_plain_loop():
    # AdamW's decoupled decay would shrink the eval head if it were stepped with a zero
    # gradient; a plain loop skips it, so the evals, which use it, tell the two apart.
    optimizer = OptimizerConfig(name="adamw", weight_decay=0.5)
    batch = TrialBatch([spec(0, 1e-2), spec(1, 3e-2)], eval_head_workload, optimizer, DETECT, CPU)
    for result in batch.run():
        single = alone(result.spec, optimizer, eval_head_workload)
        assert_same_trial(result, single)
        evals = [e["eval_loss"] for e in result.evals]
        np.testing.assert_allclose(evals, [e["eval_loss"] for e in single.evals], rtol=1e-5)
    assert batch.dormant == ["model.eval_head.weight", "model.eval_head.bias"]
    assert batch.flat.shape[1] == sum(p.numel() for p in EvalHead().parameters()) - 32 * 3 - 3


def test_a_parameter_reached_in_some_steps_only_runs_the_batch_one_at_a_time():
    factory = sometimes_extra([])  # the extra layer is used on even steps only
    optimizer = OptimizerConfig(name="adam")  # counts steps per parameter: a shared row cannot skip one
    results = list(run_trials([spec(0, 1e-2), spec(1, 3e-2)], TrialJob(factory, optimizer, DETECT, "cpu")))
    assert [r.engine for r in results] == ["sequential", "sequential"]
    assert all("'extra.weight' gets a gradient in some steps and not in others" in r.fallback for r in results)
    for result in results:
        np.testing.assert_array_equal(result.steps.train_loss, alone(result.spec, optimizer, factory).steps.train_loss)


def test_sequential_engine_is_the_single_trial_trainer():
    optimizer = OptimizerConfig(name="momentum")
    job = TrialJob(MLP, optimizer, DETECT, "cpu", engine="sequential")
    for result in run_trials([spec(0, 0.01), spec(1, 0.1)], job):
        assert result.engine == "sequential" and result.fallback is None
        np.testing.assert_array_equal(result.steps.train_loss, alone(result.spec, optimizer).steps.train_loss)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batch_matches_cpu_alone_and_syncs_in_chunks():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    optimizer = OptimizerConfig(name="adam")
    trials = [spec(0, 1e-3, steps=80), spec(1, 3e-3, steps=80, clip=ClipConfig(threshold=1.0)), spec(2, 50.0, steps=80)]
    cuda = torch.device("cuda")
    for result in TrialBatch(trials, MLP, optimizer, DETECT, cuda).run():
        on_cpu = alone(result.spec, optimizer)
        assert result.status == on_cpu.status and result.steps_run == on_cpu.steps_run
        n = min(20, on_cpu.steps_run)
        np.testing.assert_allclose(result.steps.train_loss[:n], on_cpu.steps.train_loss[:n], rtol=1e-4)
        single = alone(result.spec, optimizer, device=cuda)  # the sequential trainer on the GPU, too
        assert single.status == on_cpu.status and single.steps_run == on_cpu.steps_run


def test_per_layer_logging_matches_the_trial_alone_and_reads_nothing_back_per_step(monkeypatch):
    from stabsweep.training import layers as layer_log

    specs = [spec(0, 0.01, steps=20), spec(1, 0.05, steps=30)]
    optimizer = OptimizerConfig(name="momentum")
    real = {name: getattr(torch.Tensor, name) for name in ("cpu", "item", "tolist")}
    reading = []

    def guarded(method):
        def call(self, *args, **kwargs):
            reading.append(method)
            return real[method](self, *args, **kwargs)

        return call

    def hot_path(fn):  # a step's logging must not read a value back to the host
        def call(*args, **kwargs):
            for name in real:
                monkeypatch.setattr(torch.Tensor, name, guarded(name))
            try:
                return fn(*args, **kwargs)
            finally:
                for name, method in real.items():
                    monkeypatch.setattr(torch.Tensor, name, method)

        return call

    monkeypatch.setattr(layer_log.BatchLayers, "before_clipping", hot_path(layer_log.BatchLayers.before_clipping))
    monkeypatch.setattr(layer_log.BatchLayers, "after_step", hot_path(layer_log.BatchLayers.after_step))
    batch = {r.spec.trial_id: r for r in TrialBatch(specs, MLP, optimizer, DETECT, CPU, layers_every=5).run()}
    assert reading == []
    for trial_id, result in batch.items():
        single = train_trial(specs[trial_id], MLP, optimizer, DETECT, CPU, layers_every=5)
        assert list(result.layers.steps) == list(single.layers.steps) == list(range(5, specs[trial_id].steps + 1, 5))
        assert [n.removeprefix("model.") for n in result.layers.layers] == single.layers.layers
        for field in ("grad_norm", "weight_norm", "update_ratio"):
            np.testing.assert_allclose(getattr(result.layers, field), getattr(single.layers, field), rtol=1e-4)


def test_with_layer_logging_off_the_step_only_asks_whether_it_is_due(monkeypatch):
    from stabsweep.training import layers as layer_log

    def never(*args, **kwargs):
        raise AssertionError("logging work on a step with log_layers off")

    for name in ("before_clipping", "after_step", "lay_out", "log"):
        monkeypatch.setattr(layer_log.BatchLayers, name, never)
    results = list(TrialBatch([spec(0, 0.01), spec(1, 0.05)], MLP, OptimizerConfig(name="sgd"), DETECT, CPU).run())
    assert all(r.layers is None for r in results)
