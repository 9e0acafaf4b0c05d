"""The curvature probe (docs/contract.md, "curvature"): sharpness from Hessian-vector products
against the full Hessian and an analytic value, the optimizers' stability thresholds checked by
training on a quadratic, and sharpness along training in both engines and across a resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import stabsweep
from stabsweep.analysis.curvature import SweepEdge, compare, stable_sharpness, sweep_edge, threshold
from stabsweep.cli import app
from stabsweep.optim.optimizers import build_optimizer
from stabsweep.records import TrialStatus
from stabsweep.training import curvature as curvature_module
from stabsweep.training.curvature import ModelHessian, PowerIteration, lanczos_top

from .conftest import CONFIGS

runner = CliRunner()


def tiny_workload(seed: int = 0) -> stabsweep.Workload:
    torch.manual_seed(seed)
    x, y = torch.randn(48, 5), torch.randint(0, 3, (48,))
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    return stabsweep.Workload(model=model, train_data=[(x, y)], loss_fn=nn.CrossEntropyLoss())


def full_hessian_top(hessian: ModelHessian) -> float:
    def loss(flat: torch.Tensor) -> torch.Tensor:
        return hessian.loss(hessian._split(flat))

    matrix = torch.autograd.functional.hessian(loss, hessian.flat.double().float())
    return float(torch.linalg.eigvalsh(matrix.double())[-1])


def test_lanczos_and_power_iteration_match_the_full_hessian():
    workload = tiny_workload()
    hessian = ModelHessian(workload, workload.train_data)
    exact = full_hessian_top(hessian)
    found = lanczos_top(hessian, hessian.dim, like=hessian.flat, tol=1e-6)
    assert abs(found.value - exact) / exact < 1e-3
    assert found.residual < 1e-3 and found.matvecs < hessian.dim  # never the whole matrix

    x, y = workload.train_data[0]
    names = [n for n, _ in workload.model.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in workload.model.parameters()]

    def loss(ps):
        out = torch.func.functional_call(workload.model, dict(zip(names, ps, strict=True)), (x,))
        return nn.functional.cross_entropy(out, y)

    values, residuals = PowerIteration(iterations=100).measure(loss(params).reshape(1), params, batched=False)
    assert abs(values[0] - exact) / exact < 1e-3 and residuals[0] < 1e-2


@pytest.mark.parametrize("parallel_from", [curvature_module.ProductThreads.PARALLEL_FROM, 0.0])
def test_the_probe_starts_on_one_thread_times_more_only_for_slow_products_and_gives_torchs_back(
    monkeypatch, parallel_from
):
    """A tiny model's product is fast: it stays on one thread (waking torch's pool costs more).
    With the bar at 0 every product is "slow": two more are timed on torch's own count."""
    picked, threads_seen = [], []

    class Recording(curvature_module.ProductThreads):
        PARALLEL_FROM = parallel_from

        def restore(self):
            picked.append((self.before, self.chosen, {n: len(t) for n, t in self.seconds.items()}))
            super().restore()

    monkeypatch.setattr(curvature_module, "ProductThreads", Recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        workload = tiny_workload()
        hessian = ModelHessian(workload, workload.train_data)

        def product(vector):
            threads_seen.append(torch.get_num_threads())
            return hessian(vector)

        found = lanczos_top(product, hessian.dim, like=hessian.flat, tol=1e-6)
        assert torch.get_num_threads() == 2  # restored
        assert found.value == pytest.approx(full_hessian_top(hessian), rel=1e-3)
        [(was, chosen, timed)] = picked
        assert threads_seen[:3] == [1, 1, 1]  # the graph's build and the first timed products
        if parallel_from:
            assert was == 2 and chosen == 1 and timed == {1: 2, 2: 0} and set(threads_seen) == {1}
        else:
            assert was == 2 and chosen in (1, 2) and timed == {1: 2, 2: 2} and threads_seen[3:5] == [2, 2]
            assert set(threads_seen[5:]) == {chosen}
    finally:
        torch.set_num_threads(before)


def test_a_weight_the_loss_never_reaches_has_no_curvature_and_does_not_stop_the_probe():
    """A trainable head the loss does not use (an unused pooler, say): its rows of H are zero."""

    class WithUnusedHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
            self.unused = nn.Linear(7, 2)

        def forward(self, x):
            return self.body(x)

    torch.manual_seed(0)
    x, y = torch.randn(48, 5), torch.randint(0, 3, (48,))
    model = WithUnusedHead()
    workload = stabsweep.Workload(model=model, train_data=[(x, y)], loss_fn=nn.CrossEntropyLoss())
    hessian = ModelHessian(workload, workload.train_data)
    found = lanczos_top(hessian, hessian.dim, like=hessian.flat, tol=1e-6)
    plain = stabsweep.Workload(model=model.body, train_data=[(x, y)], loss_fn=nn.CrossEntropyLoss())
    assert found.value == pytest.approx(full_hessian_top(ModelHessian(plain, plain.train_data)), rel=1e-3)
    unused = sum(p.numel() for p in model.unused.parameters())
    assert torch.count_nonzero(hessian.gradient()[-unused:]) == 0


def test_sharpness_of_a_quadratic_loss_is_its_analytic_curvature():
    """Least squares: the loss ½·mean((Xw − y)²)·2 has Hessian 2XᵀX/n, its top eigenvalue known."""
    torch.manual_seed(1)
    x = torch.randn(64, 6) * torch.tensor([3.0, 1, 1, 0.5, 0.2, 0.1])
    y = torch.randn(64, 1)
    model = nn.Linear(6, 1, bias=False)
    workload = stabsweep.Workload(model=model, train_data=[(x, y)], loss_fn=nn.MSELoss())
    hessian = ModelHessian(workload, workload.train_data)
    analytic = float(torch.linalg.eigvalsh(2 * x.T.double() @ x.double() / 64)[-1])
    found = lanczos_top(hessian, hessian.dim, like=hessian.flat, tol=1e-8)
    assert found.value == pytest.approx(analytic, rel=1e-4)


def train_on_quadratic(
    name: str, kwargs: dict, lr: float, curvature: float, steps: int = 400, settle: int = 0
) -> float:
    """|θ| after training f(θ) = ½·λ·θ² from θ = 0.01 with torch.optim; ``settle`` steps at a
    negligible rate first, so that an optimizer's bias corrections have decayed (steady state)."""
    theta = torch.nn.Parameter(torch.ones(4, dtype=torch.float64) * 1e-2)
    optimizer = build_optimizer(name, kwargs, [theta], lr)
    for step in range(settle + steps):
        optimizer.param_groups[0]["lr"] = lr if step >= settle else 1e-12
        optimizer.zero_grad()
        (0.5 * curvature * theta.square()).sum().backward()
        optimizer.step()
    return float(theta.detach().abs().max())


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("sgd", {}),
        ("momentum", {"momentum": 0.9}),
        ("momentum", {"momentum": 0.5, "dampening": 0.3}),
        ("nesterov", {"momentum": 0.9}),
    ],
)
def test_each_sgd_family_converges_below_its_threshold_and_diverges_above(name, kwargs):
    bound = threshold(name, kwargs)
    curvature = 10.0
    edge = bound.edge(curvature)
    assert train_on_quadratic(name, kwargs, 0.95 * edge, curvature) < 1e-4  # converged
    assert train_on_quadratic(name, kwargs, 1.05 * edge, curvature) > 1.0  # diverged


def test_adams_preconditioned_threshold_holds_on_a_quadratic():
    """With ε far above √v̂, Adam's preconditioner is the constant ε once its bias corrections
    have decayed (the steady state the threshold is about; early on, 1/(1 − β₁ᵗ) inflates the
    steps): on P⁻¹H = λ/ε it is stable below (2 + 2β₁)/((1 − β₁)η), 38/η for β₁ = 0.9, and not
    above: there the oscillation grows (until √v̂ rivals ε and the preconditioner, growing,
    brings it back under: Adam's edge of stability; so the check is 100 steps in)."""
    bound = threshold("adam", {})
    assert bound.constant == pytest.approx(38.0) and bound.preconditioned
    eps, curvature = 1e3, 1.0
    edge = bound.edge(curvature / eps)
    below = train_on_quadratic("adam", {"eps": eps}, 0.9 * edge, curvature, steps=100, settle=300)
    above = train_on_quadratic("adam", {"eps": eps}, 1.1 * edge, curvature, steps=100, settle=300)
    assert below < 1e-2 and above > 1.0  # from 0.01: shrinking below the threshold, grown 100× above it


def test_thresholds_in_words_and_comparisons():
    assert threshold("momentum", {}).formula == "(2 + 2β)/η" and threshold("momentum", {}).constant == 3.8
    assert threshold("nadam", {}) is None
    assert "catapult" in compare(0.1, SweepEdge(0.5, TrialStatus.DIVERGED, 0.5, 0.05))
    assert "within 1.5× of it" in compare(1.0, SweepEdge(1.2, TrialStatus.DIVERGED, 1.2, 0.5))
    sharpened = SweepEdge(0.3, TrialStatus.DIVERGED, 0.3, 0.1)
    assert "likely sharpened" in compare(1.0, sharpened) and "log sharpness" in compare(1.0, sharpened)
    assert "sharpened 20×" in compare(1.0, sharpened, growth=20.0)


def test_progressive_sharpening_is_claimed_only_where_the_logged_sharpness_grew():
    """An edge below the prediction is explained by sharpening only when the log shows it."""
    said = compare(1.0, SweepEdge(0.3, TrialStatus.UNSTABLE, 0.5, 0.1), growth=1.1)
    assert "does not explain the gap" in said and "sharpened 1" not in said


def test_a_first_failure_that_learned_nothing_is_told_from_a_divergence():
    """The threshold bounds divergence: a rate whose network stopped learning is no divergence,
    and the comparison then quotes the first rate that did diverge."""
    died = compare(7.0, SweepEdge(1.0, TrialStatus.LEARNED_NOTHING, 3.16, 0.56), growth=100.0)
    assert "learned nothing rather than diverging" in died and "first divergence, at 3.16" in died
    assert "sharpened 100×" in died
    assert "catapult range" in compare(1.2, SweepEdge(1.78, TrialStatus.LEARNED_NOTHING, 10.0, 1.0))
    assert "bounds divergence)" in compare(2.0, SweepEdge(0.5, TrialStatus.LEARNED_NOTHING, 2.5, 0.3))
    assert "no rate above best_lr diverged" in compare(10.0, SweepEdge(0.5, TrialStatus.LEARNED_NOTHING, None, 0.3))
    everything_failed = compare(9.6, SweepEdge(None, None, 100.0, None))
    assert "no rate of the sweep trained" in everything_failed and "10× above" in everything_failed
    assert "extend its grid downward" in everything_failed
    assert "sits at about the predicted edge" in compare(9.6, SweepEdge(1.0, TrialStatus.LEARNED_NOTHING, 10.0, 0.3))
    warmed = compare(0.67, SweepEdge(3.0, TrialStatus.UNSTABLE, None, 1.0), start=0.05)
    assert "its schedule starts it at 0.05× that, 4.5× below the edge: the curvature at the start does not" in warmed
    rose = compare(10.0, SweepEdge(0.5, TrialStatus.UNSTABLE, 31.6, 0.3), growth=27.0)  # rose and recovered
    assert "(its first divergence, at 31.6, 3.2× above it): training sharpened 27×" in rose


def test_the_sweep_edge_is_the_lr_runs_own_reading_and_its_first_divergence_above_best_lr():
    """The status is the lr run's ``unstable_kind`` (its worst seed); a divergence at or below
    best_lr (one seed's, at a rate the sweep trains at) is no edge."""
    rates = [
        {"lr": 0.1, "ok": 1, "diverged": 1},
        {"lr": 0.3, "ok": 2, "diverged": 0},
        {"lr": 1.0, "ok": 1, "learned_nothing": 1, "diverged": 0},
        {"lr": 3.16, "diverged": 2},
    ]
    summary = {"unstable_base_lr": 1.0, "best_lr": 0.3, "unstable_kind": "learned_nothing", "rates": rates}
    assert sweep_edge(summary) == SweepEdge(1.0, TrialStatus.LEARNED_NOTHING, 3.16, 0.3)
    assert sweep_edge({"unstable_base_lr": None, "best_lr": 0.1}) == SweepEdge(None, None, None, 0.1)


def test_the_sharpness_training_grew_to_leaves_out_measurements_at_or_above_their_threshold():
    """A trial at the edge of stability hovers at (or overshoots) its threshold: that value is
    set by its rate, not by the landscape, so only measurements below it count."""
    trials = pd.DataFrame({"trial_id": [0, 1, 2], "status": ["ok", "ok", "diverged"]})
    sharpness = pd.DataFrame(
        {
            "trial_id": [0, 0, 1, 1, 2],
            "sharpness": [3.0, 5.0, 4.0, 30.0, 90.0],
            "ratio": [0.1, 0.4, 0.5, 1.6, 0.9],  # trial 1 catapults (1.6); trial 2 failed
        }
    )
    assert stable_sharpness(sharpness, trials) == 5.0
    assert stable_sharpness(sharpness[sharpness["ratio"] >= 1], trials) is None
    assert stable_sharpness(None, trials) is None


@pytest.mark.slow
def test_vectorized_sharpness_equals_each_trial_alone(tmp_path):
    args = ["--set", "train.log_sharpness_every=10", "--quiet"]
    for engine in ("vectorized", "sequential"):
        result = runner.invoke(
            app, ["lr", str(CONFIGS / "smoke.yaml"), "--out", str(tmp_path / engine), "--engine", engine, *args]
        )
        assert result.exit_code == 0, result.output
    batched = pd.read_csv(tmp_path / "vectorized" / "lr" / "sharpness.csv")
    alone = pd.read_csv(tmp_path / "sequential" / "lr" / "sharpness.csv")
    pd.testing.assert_frame_equal(batched[["trial_id", "step"]], alone[["trial_id", "step"]])
    calm = (batched["lr"] <= 0.1) & (batched["residual"] < 1e-2) & (alone["residual"] < 1e-2)
    assert calm.sum() >= 6
    np.testing.assert_allclose(batched["sharpness"][calm], alone["sharpness"][calm], rtol=1e-3)
    assert (batched["threshold"] == 3.8 / batched["lr"]).all()  # momentum 0.9: (2 + 2β)/η
    summary = json.loads((tmp_path / "vectorized" / "lr" / "summary.json").read_text())
    assert summary["sharpness"]["sentence"] in summary["verdict"]
    assert (tmp_path / "vectorized" / "lr" / "plots" / "sharpness.png").stat().st_size > 10_000


@pytest.mark.slow
def test_resume_keeps_the_sharpness_of_finished_trials_and_redoes_the_rest(tmp_path):
    args = [
        "lr",
        str(CONFIGS / "smoke.yaml"),
        "--out",
        str(tmp_path),
        "--set",
        "train.log_sharpness_every=20",
        "--engine",
        "sequential",
        "--quiet",
    ]
    assert runner.invoke(app, args).exit_code == 0
    folder = tmp_path / "lr"
    whole = pd.read_csv(folder / "sharpness.csv")
    trials = pd.read_csv(folder / "trials.csv")
    trials[trials["trial_id"] < 3].to_csv(folder / "trials.csv", index=False)  # as if killed after trial 2
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    again = pd.read_csv(folder / "sharpness.csv")
    pd.testing.assert_frame_equal(again, whole, rtol=1e-6)


def test_a_model_without_double_backward_trains_with_a_note_instead(tmp_path):
    class Once(torch.autograd.Function):  # a custom op that refuses a second derivative
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, grad):
            if torch.is_grad_enabled():  # backward with create_graph: a Hessian-vector product
                raise NotImplementedError("Once has no double backward")
            (x,) = ctx.saved_tensors
            return grad * (x > 0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(64, 16), nn.Linear(16, 10)

        def forward(self, x):
            return self.b(Once.apply(self.a(x)))

    def build(seed, batch_size=32):
        from stabsweep.workloads import mlp

        workload = mlp.build(seed=seed, batch_size=batch_size, hidden=8, depth=1)
        torch.manual_seed(seed)
        workload.model = Net()
        return workload

    config = {
        "name": "once",
        "device": "cpu",
        "train": {"steps": 20, "eval_every": 10, "log_sharpness_every": 5},
        "lr_sweep": {"lrs": [0.01, 0.1]},
        "execution": {"engine": "sequential"},
    }
    result = stabsweep.lr(config, factory=build, out=tmp_path, quiet=True)
    assert set(result.trials["status"]) <= {"ok", "learned_nothing"}  # trained, not failed
    assert not (result.folder / "sharpness.csv").exists()
    assert (result.trials["steps_run"] == 20).all()


@pytest.mark.slow
def test_curvature_command_against_the_lr_run(tmp_path):
    assert runner.invoke(app, ["lr", str(CONFIGS / "smoke.yaml"), "--out", str(tmp_path), "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["curvature", str(CONFIGS / "smoke.yaml"), "--out", str(tmp_path), "--lr", "0.3"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "curvature" / "summary.json").read_text())
    lr = json.loads((tmp_path / "lr" / "summary.json").read_text())
    assert summary["converged"] and summary["residual"] < 1e-3 and summary["sharpness"] > 0
    assert summary["predicted_edge"] == pytest.approx(3.8 / summary["sharpness"])
    assert summary["unstable_base_lr"] == lr["unstable_base_lr"]
    assert summary["edge_ratio"] == pytest.approx(lr["unstable_base_lr"] / summary["predicted_edge"])
    assert "SGD with momentum 0.9 is stable while the sharpness stays below (2 + 2β)/η" in summary["verdict"]
    assert f"for rates below 3.8/λ₀ = {summary['predicted_edge']:.3g}" in summary["verdict"]
    side = "at or above" if lr["unstable_base_lr"] <= 0.3 else "below"
    assert "Against the lr sweep" in summary["verdict"]
    assert f"At --lr 0.3: {0.3 / summary['predicted_edge']:.2g}× the predicted edge" in summary["verdict"]
    assert f"; {side} the sweep's unstable rate {lr['unstable_base_lr']:.3g}." in summary["verdict"]
    assert "Cost:" in result.output and "of the lr sweep's" in summary["cost"]
    read = stabsweep.open_run(tmp_path / "curvature")
    assert isinstance(read, stabsweep.CurvatureResult) and read.sharpness == summary["sharpness"]
    assert summary["trained_sharpness"] is None and summary["sharpening"] is None  # the lr run logged none
    assert summary["unstable_status"] == lr["unstable_kind"]
    trials = pd.read_csv(tmp_path / "lr" / "trials.csv")
    diverged = trials[(trials["status"] == "diverged") & (trials["lr"] > lr["best_lr"])]["lr"]
    assert summary["diverged_lr"] == (pytest.approx(diverged.min()) if len(diverged) else None)
    assert summary["next_command"].endswith(f"--set train.log_sharpness_every=25 --out {tmp_path} --force")


@pytest.mark.slow
def test_curvature_reads_the_sharpness_the_lr_runs_trials_grew_to(tmp_path):
    args = ["--out", str(tmp_path), "--quiet", "--set", "train.log_sharpness_every=10"]
    assert runner.invoke(app, ["lr", str(CONFIGS / "smoke.yaml"), *args]).exit_code == 0
    result = runner.invoke(app, ["curvature", str(CONFIGS / "smoke.yaml"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "curvature" / "summary.json").read_text())
    logged = pd.read_csv(tmp_path / "lr" / "sharpness.csv")
    trials = pd.read_csv(tmp_path / "lr" / "trials.csv")
    ok = trials[trials["status"] == "ok"]["trial_id"]
    below = logged[logged["trial_id"].isin(ok) & (logged["ratio"] < 1)]
    assert summary["trained_sharpness"] == pytest.approx(below["sharpness"].max())
    assert summary["trained_edge"] == pytest.approx(3.8 / summary["trained_sharpness"])
    assert summary["sharpening"] == pytest.approx(summary["trained_sharpness"] / summary["sharpness"])
    lr = json.loads((tmp_path / "lr" / "summary.json").read_text())
    assert summary["next_command"] == lr["next_command"]  # what the lr run found leads on
    assert "while below their own threshold" in summary["verdict"]


def test_adam_probe_is_preconditioned(tmp_path):
    found = stabsweep.curvature(
        CONFIGS / "smoke.yaml", out=tmp_path, quiet=True, train__optimizer="adam", curvature__batches=2
    )
    assert found.preconditioned and found.summary["threshold_constant"] == pytest.approx(38.0)
    assert found.predicted_edge == pytest.approx(38.0 / found.sharpness)
    assert math.isfinite(found.residual)


def test_a_sweep_where_nothing_trained_is_compared_by_its_divergence_and_sent_to_doctor(tmp_path):
    """Every rate of the grid diverges: the sweep has no edge, its first divergence is quoted,
    and the lr run's own next step (doctor) leads, not another sweep."""
    grid = {"lr_sweep__lrs": [100.0, 1000.0], "train__steps": 20}
    stabsweep.lr(CONFIGS / "smoke.yaml", out=tmp_path, quiet=True, **grid)
    found = stabsweep.curvature(CONFIGS / "smoke.yaml", out=tmp_path, quiet=True, **grid)
    assert found.summary["diverged_lr"] == 100.0 and found.summary["unstable_status"] is None
    assert "no rate of the sweep trained; its first divergence, at 100" in found.summary["verdict"]
    assert found.summary["next_command"].startswith("stabsweep doctor")


def test_a_warmup_schedule_states_where_its_trials_start_against_the_edge(tmp_path):
    """With a linear warmup of 10 steps the first update runs at 1/10 of the base rate: base
    rates up to 10× the predicted edge start below it, and the verdict says so."""
    found = stabsweep.curvature(
        CONFIGS / "smoke.yaml", out=tmp_path, quiet=True, train__schedule={"name": "warmup", "warmup_steps": 10}
    )
    edge = found.predicted_edge
    assert f"schedule starts at 0.1× the base rate, so base rates up to {edge / 0.1:.3g}" in found.summary["verdict"]
    plain = stabsweep.curvature(CONFIGS / "smoke.yaml", out=tmp_path / "plain", quiet=True)
    assert "schedule starts at" not in plain.summary["verdict"]  # a constant rate starts at its base


def test_a_product_that_is_not_finite_ends_the_solve_with_nan_and_gives_torchs_threads_back():
    before = torch.get_num_threads()
    found = lanczos_top(lambda v: v * float("nan"), 50, like=torch.zeros(50))
    assert math.isnan(found.value) and found.residual == math.inf and found.matvecs == 1
    assert torch.get_num_threads() == before


def test_a_loss_whose_curvature_is_not_finite_is_a_stated_result_not_a_crash(tmp_path):
    """sqrt of a negative output: the loss and its products are NaN. The probe says so,
    writes summary.json, exits 3 and sends the user to doctor."""

    def build(seed, batch_size=32):
        torch.manual_seed(seed)
        x = torch.randn(64, 5)
        model = nn.Linear(5, 1)
        return stabsweep.Workload(model=model, train_data=[(x, x)], loss=lambda m, b: m(b[0]).sqrt().mean())

    with pytest.raises(stabsweep.RunFailed) as failed:
        stabsweep.curvature({"name": "nan", "device": "cpu"}, factory=build, out=tmp_path, quiet=True)
    summary = json.loads((tmp_path / "curvature" / "summary.json").read_text())
    assert failed.value.summary == summary and summary["sharpness"] is None
    assert "the Hessian-vector products were not finite" in summary["verdict"]
    assert summary["next_command"].startswith("stabsweep doctor")


def _linear_workload(loss):
    def build(seed, batch_size=32):
        torch.manual_seed(seed)
        x = torch.randn(64, 5)
        return stabsweep.Workload(model=nn.Linear(5, 1), train_data=[(x, x)], loss=loss)

    return build


def test_adam_with_a_nan_gradient_is_told_from_a_zero_preconditioner(tmp_path):
    """NaN gradients make P NaN, not 0: the verdict names the gradient, not Adam's eps."""
    build = _linear_workload(lambda m, b: m(b[0]).sqrt().mean())  # sqrt of negative outputs: NaN
    config = {"name": "nan", "device": "cpu", "train": {"optimizer": {"name": "adam"}}}
    with pytest.raises(stabsweep.RunFailed) as failed:
        stabsweep.curvature(config, factory=build, out=tmp_path, quiet=True)
    assert "the loss's gradient is not finite at the initial weights" in failed.value.summary["verdict"]
    assert "preconditioner P" not in failed.value.summary["verdict"]


def test_a_function_without_a_double_backward_is_said_not_measured_as_zero_curvature(tmp_path):
    """The probe differentiates the loss twice; a custom Function marked once-differentiable
    leaves the gradient without a graph: said so (exit 3, doctor next), not a sharpness of 0
    and not ARPACK's error."""
    from torch.autograd.function import once_differentiable

    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        @once_differentiable
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 2 * x * grad

    build = _linear_workload(lambda m, b: Square.apply(m(b[0])).mean())
    with pytest.raises(stabsweep.RunFailed) as failed:
        stabsweep.curvature({"name": "once", "device": "cpu"}, factory=build, out=tmp_path, quiet=True)
    assert "carries no graph to differentiate again" in failed.value.summary["verdict"]
    assert failed.value.summary["next_command"].startswith("stabsweep doctor")


def test_a_zero_hessian_has_sharpness_zero_not_an_arpack_error():
    found = lanczos_top(lambda v: torch.zeros_like(v), 40, like=torch.zeros(40))
    assert found.value == 0.0 and found.residual == 0.0


def test_memory_running_out_in_the_probe_suggests_one_batch(tmp_path, monkeypatch):
    from stabsweep.training import curvature as probe

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(probe, "lanczos_top", out_of_memory)
    with pytest.raises(stabsweep.RunFailed) as failed:
        stabsweep.curvature(CONFIGS / "smoke.yaml", out=tmp_path, quiet=True)
    assert "memory ran out during the probe" in failed.value.summary["verdict"]
    assert failed.value.summary["next_command"].endswith("--set curvature.batches=1")


def test_a_probe_that_measured_nothing_still_says_why_under_quiet(tmp_path):
    build_config = {"name": "nan", "device": "cpu", "train": {"optimizer": {"name": "sgd"}}}
    from stabsweep.report.console import failure_lines

    with pytest.raises(stabsweep.RunFailed) as failed:
        stabsweep.curvature(
            build_config, factory=_linear_workload(lambda m, b: m(b[0]).sqrt().mean()), out=tmp_path, quiet=True
        )
    [line] = failure_lines(failed.value.summary)
    assert line.startswith("curvature: No sharpness measured:")


def test_train_warmup_steps_count_in_where_the_trials_start(tmp_path):
    found = stabsweep.curvature(CONFIGS / "smoke.yaml", out=tmp_path, quiet=True, train__warmup_steps=4)
    assert "schedule starts at 0.25× the base rate" in found.summary["verdict"]
