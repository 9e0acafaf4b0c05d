"""Sharpness: the top eigenvalue of the training loss's Hessian, from Hessian-vector products only.

No Hessian is ever formed. Two solvers, each where it is the cheaper:

* :func:`lanczos_top` — the one-off probe (``stabsweep curvature``): Lanczos through
  ``scipy.sparse.linalg.eigsh`` (ARPACK) over a ``LinearOperator`` whose product is an HVP
  through the gradient's kept graph (reverse-over-reverse: one backward pass per product,
  :class:`ModelHessian` says why not forward-over-reverse). ARPACK's implicitly restarted Lanczos reaches a
  relative tolerance of 1e-3 in tens of products where power iteration can need hundreds
  (its rate is λ₂/λ₁), and ``which="LA"`` gives the largest *algebraic* eigenvalue, which
  power iteration cannot tell from a large negative one.
* :class:`PowerIteration` — sharpness along training (``train.log_sharpness_every``), every
  trial of a vectorized batch at once: the step's own graph is differentiated twice
  (reverse-over-reverse, ``create_graph``), so the HVPs see the step's exact batch, dropout
  masks and BatchNorm statistics, and trials are independent, so the Hessian of their summed
  loss is block-diagonal and one product serves every trial. Warm-started from the last
  eigenvector, a few iterations suffice between nearby steps; a negative dominant eigenvalue
  is shifted away (iterating H − μI) so the largest algebraic one is reported.

Every value comes with its residual ‖Hv − λv‖ / |λ|, so a number is never shown as exact
when it is not. Preconditioned sharpness (the top eigenvalue of P⁻¹H, computed as that of the
symmetric P^-½ H P^-½) uses the optimizer's own state: ``preconditioner``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stabsweep.errors import user_code
from stabsweep.training.common import training_loss
from stabsweep.workloads.base import Workload


@dataclass(frozen=True)
class Eigen:
    """A top eigenvalue and how far it is from exact."""

    value: float  # the largest algebraic eigenvalue found (1/loss-unit per weight² ... : sharpness)
    residual: float  # ‖Hv − λv‖ / |λ| of the unit eigenvector v
    matvecs: int  # Hessian-vector products spent
    method: str  # "lanczos (scipy eigsh)" or "power iteration"

    def converged(self, tol: float) -> bool:
        return self.residual <= tol


def lanczos_top(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    *,
    like: torch.Tensor,
    tol: float = 1e-3,
    max_matvecs: int = 300,
    seed: int = 0,
) -> Eigen:
    """The largest algebraic eigenvalue of the symmetric operator ``matvec`` (flat vectors of
    ``dim`` entries, dtype and device of ``like``) by scipy's ``eigsh``. Non-convergence within
    ``max_matvecs`` products is not an error: the best estimate is returned with its residual;
    a product that is not finite ends the solve with a NaN value and an infinite residual; an
    operator that is 0 (every product so far) has the eigenvalue 0, exactly."""
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh
    from threadpoolctl import ThreadpoolController, threadpool_limits

    count, nonzero = 0, False
    threads: ProductThreads | None = None  # on a CPU, set in the try below: its finally gives torch's count back

    def product(x: np.ndarray) -> np.ndarray:
        nonlocal count, nonzero
        count += 1
        vector = torch.as_tensor(np.ascontiguousarray(x).ravel(), dtype=like.dtype, device=like.device)
        with threads.timed(count) if threads is not None else contextlib.nullcontext():
            out = matvec(vector).detach().double().cpu().numpy()
        if not np.isfinite(out).all():  # ARPACK would fail on it ("could not build an Arnoldi factorization")
            raise _NotFinite
        nonzero = nonzero or bool(out.any())
        return out

    operator = LinearOperator((dim, dim), matvec=product, dtype=np.float64)
    start = np.random.default_rng(seed).standard_normal(dim)
    ncv = min(dim, 20)
    try:
        threads = ProductThreads() if like.device.type == "cpu" else None
        # ARPACK's own work is tiny (vectors of ``dim``), but numpy's OpenBLAS threads spin
        # between its calls and take the cores from torch's threads computing the products:
        # 15-30 ms a product instead of 3-4 on the quickstart, 2 cores. One thread for numpy's
        # and scipy's BLAS only: where torch links a BLAS of its own, its products keep theirs.
        # Leaving this block also sets OpenMP's count back to what it was on entry (one thread,
        # ProductThreads'), so the residual's product below stays inside it, on the chosen count.
        with threadpool_limits(limits=_numpy_blas(ThreadpoolController())):
            try:
                values, vectors = eigsh(
                    operator, k=1, which="LA", tol=tol, ncv=ncv, v0=start, maxiter=max(1, max_matvecs // ncv)
                )
            except ArpackNoConvergence as exc:  # the best Ritz pair so far, judged by its residual below
                values, vectors = exc.eigenvalues, exc.eigenvectors
            except _NotFinite:  # NaN or inf in a product: no eigenvalue to report
                return Eigen(math.nan, math.inf, count, "lanczos (scipy eigsh)")
            except ArpackError:
                if nonzero:
                    raise
                return Eigen(0.0, 0.0, count, "lanczos (scipy eigsh)")  # H = 0: ARPACK cannot build a Krylov basis
            if not len(values):
                return Eigen(math.nan, math.inf, count, "lanczos (scipy eigsh)")
            value, vector = float(values[0]), vectors[:, 0] / np.linalg.norm(vectors[:, 0])
            residual = float(np.linalg.norm(product(vector) - value * vector) / max(abs(value), 1e-30))
    finally:
        if threads is not None:
            threads.restore()
    return Eigen(value, residual, count, "lanczos (scipy eigsh)")


class _NotFinite(Exception):
    """A Hessian-vector product held NaN or inf."""


class ProductThreads:
    """torch's CPU threads for the solver's products: one, unless a product is slow enough for
    more to pay.

    ARPACK calls back for one product at a time from the main thread. A small model's product
    gains nothing from torch's other threads and loses to waking them: on the quickstart MLP
    (2 cores) a product took 2.2 ms on one thread and on two, but the first products on two
    took 9 to 100 ms while the pool woke, and the whole probe 0.16 to 0.26 s against 0.12 to
    0.13 s on one thread. A larger model's product gains (the post-norm Transformer's probe:
    2.1 s on two threads against 3.2 s on one). So the products start on one thread (the first
    builds the graph and is not timed); products 2 and 3 are timed there, and only when the
    faster took at least ``PARALLEL_FROM`` (where 30 products take 0.3 s, so halving them would
    repay a slow wake) products 4 and 5 are timed on torch's own count and the rest run on
    whichever was faster. No product is spent on the choice; torch's count is restored after.
    """

    PARALLEL_FROM = 0.010  # seconds a one-thread product takes before more threads are tried
    ONE, ALL = (2, 3), (4, 5)  # the products timed on one thread, then on torch's own count

    def __init__(self) -> None:
        self.before = torch.get_num_threads()
        self.seconds: dict[int, list[float]] = {1: [], self.before: []}
        self.chosen: int | None = None if self.before > 1 else self.before
        torch.set_num_threads(1)

    @contextlib.contextmanager
    def timed(self, count: int) -> Iterator[None]:
        """Around product number ``count`` (from 1)."""
        if self.chosen is not None or count not in self.ONE + self.ALL:
            yield
            return
        threads = 1 if count in self.ONE else self.before
        torch.set_num_threads(threads)
        start = time.perf_counter()
        yield
        self.seconds[threads].append(time.perf_counter() - start)
        if count == self.ONE[-1] and min(self.seconds[1]) < self.PARALLEL_FROM:
            self.chosen = 1
        elif count == self.ALL[-1]:
            self.chosen = min(self.seconds, key=lambda n: min(self.seconds[n]))
            torch.set_num_threads(self.chosen)

    def restore(self) -> None:
        torch.set_num_threads(self.before)


def _numpy_blas(controller: Any) -> dict[str, int]:
    """threadpoolctl limits of one thread for the BLAS libraries numpy and scipy load."""
    return {
        lib["prefix"]: 1
        for lib in controller.info()
        if lib["user_api"] == "blas" and any(name in lib["filepath"] for name in ("numpy", "scipy"))
    }


def twice_differentiable() -> Any:
    """A context whose forward can be differentiated twice: attention's math formulation
    (matmuls and a softmax), as the fused CPU and flash kernels of
    ``scaled_dot_product_attention`` have no derivative of their backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


class ModelHessian:
    """Hessian-vector products of a workload's mean training loss over fixed ``batches``, at
    the model's current weights, reverse-over-reverse (Pearlmutter 1994): the gradient is
    computed once with its graph kept, and each product is one backward pass through it.

    Why not ``torch.func``'s forward-over-reverse (``jvp`` of ``grad``): on the quickstart
    MLP (42,634 weights, 4 batches of 64, CPU) a product took 13 ms that way against 3–4 ms
    through the kept graph, because forward mode re-runs the forward and the backward with
    dual numbers for every product while the kept graph runs one backward; forward mode also
    tripped on a ZeroTensor written in place (a linear least-squares loss). The price is
    memory: the gradient's graph over all ``batches`` (about their activations, twice: four
    training steps' worth at ``curvature.batches: 4``) lives while the probe runs.

    The loss is that of training mode (dropout masks drawn from a fixed seed, so every product
    sees the same function; BatchNorm from each batch's statistics, its running buffers left
    untouched). ``scale`` (a flat vector) turns H into D·H·D: the preconditioned Hessian
    P^-½ H P^-½ with D = P^-½."""

    def __init__(self, workload: Workload, batches: Sequence[Any], seed: int = 0) -> None:
        from torch.func import replace_all_batch_norm_modules_

        from stabsweep.training.vmap_support import Bound

        model = copy.deepcopy(workload.model)
        replace_all_batch_norm_modules_(model)  # batch statistics only: no running buffer to update in place
        self.bound = Bound(model).train()
        self.workload, self.batches, self.seed = workload, list(batches), seed
        named = [(n, p) for n, p in self.bound.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.params = {n: p.detach() for n, p in named}
        self.fixed = {
            **{n: p.detach() for n, p in self.bound.named_parameters() if not p.requires_grad},
            **dict(self.bound.named_buffers()),
        }
        self.flat = torch.cat([p.reshape(-1) for p in self.params.values()])
        self.dim = self.flat.numel()
        self.scale: torch.Tensor | None = None
        self.graph: tuple[list[torch.Tensor], list[torch.Tensor], list[int]] | None = None  # by the first product

    def loss(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        from torch.func import functional_call

        devices = [self.flat.device] if self.flat.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), twice_differentiable():
            torch.manual_seed(self.seed)
            total = sum(
                functional_call(self.bound, {**params, **self.fixed}, (self._objective, batch))
                for batch in self.batches
            )
        return total / len(self.batches)

    def _objective(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        return training_loss(self.workload, model, batch).float()

    def gradient(self) -> torch.Tensor:
        """The loss's gradient, flat (zeros for weights the loss does not reach)."""
        inputs = [p.detach().clone().requires_grad_() for p in self.params.values()]
        loss = self.loss(dict(zip(self.names, inputs, strict=True)))
        with user_code():  # the backward of the user's graph (a custom autograd.Function's, say)
            found = torch.autograd.grad(loss, inputs, allow_unused=True)
        found = [torch.zeros_like(p) if g is None else g for p, g in zip(inputs, found, strict=True)]
        return torch.cat([g.reshape(-1) for g in found])

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        """H·v (or D·H·D·v), flat: one backward pass through the gradient's graph, kept."""
        if self.scale is not None:
            vector = vector * self.scale
        if self.graph is None:
            self.graph = self._gradient_graph()
        inputs, gradient, used = self.graph
        tangent = list(self._split(vector).values())
        with user_code():  # twice through the user's graph: a Function without a double backward raises here
            found = (
                torch.autograd.grad(gradient, [inputs[i] for i in used], [tangent[i] for i in used], retain_graph=True)
                if used
                else []
            )
        product = [torch.zeros_like(p) for p in inputs]  # a weight the loss does not reach has no curvature
        for i, value in zip(used, found, strict=True):
            product[i] = value
        out = torch.cat([p.reshape(-1) for p in product])
        return out * self.scale if self.scale is not None else out

    def _gradient_graph(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
        """The gradient with its graph kept (``create_graph``), built once for every product,
        and which weights the loss reaches (an unused head or pooler has no gradient)."""
        inputs = [p.detach().clone().requires_grad_() for p in self.params.values()]
        loss = self.loss(dict(zip(self.names, inputs, strict=True)))
        with user_code():
            found = torch.autograd.grad(loss, inputs, create_graph=True, allow_unused=True)
        used = [i for i, g in enumerate(found) if g is not None and g.requires_grad]
        return inputs, [found[i] for i in used], used

    @property
    def differentiable_twice(self) -> bool:
        """Whether the gradient carries a graph to differentiate again (known after the first
        product): not when the loss is linear in every weight, or its backward is cut (a custom
        Function marked ``@once_differentiable``, a ``.detach()`` inside the loss)."""
        return self.graph is None or bool(self.graph[2])

    def _split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            end = start + math.prod(shape)
            out[name] = flat[start:end].view(shape)
            start = end
        return out


def adam_preconditioner(
    gradient: torch.Tensor, optimizer: str, kwargs: dict[str, Any], state: dict[str, Any] | None = None
) -> torch.Tensor:
    """The diagonal of P (flat): Adam's (1 − β₁ᵗ)(√v̂ₜ + ε) (Cohen et al. 2022), RMSprop's and
    Adagrad's √v + ε. ``state`` (``exp_avg_sq``/``sum``, ``step``) is the optimizer's; without
    it, the state its first step on ``gradient`` would have (v̂₁ = g²): the preconditioner of
    the first update."""
    from stabsweep.optim.optimizers import optimizer_kwargs

    args = optimizer_kwargs(optimizer, kwargs)
    eps = preconditioner_eps(optimizer, kwargs)
    if optimizer in ("adam", "adamw", "amsgrad"):
        beta1, beta2 = (float(b) for b in args.get("betas", (0.9, 0.999)))
        if state is None:
            step, v_hat = 1, gradient.square()
        else:
            step = int(state["step"])
            v_hat = state["exp_avg_sq"] / (1 - beta2**step)
        return (1 - beta1**step) * (v_hat.sqrt() + eps)
    if optimizer == "rmsprop":
        alpha = float(args.get("alpha", 0.99))
        v = (1 - alpha) * gradient.square() if state is None else state["square_avg"]
        return v.sqrt() + eps
    if optimizer == "adagrad":
        v = gradient.square() if state is None else state["sum"]
        return v.sqrt() + eps
    raise ValueError(f"{optimizer} has no preconditioner")


def preconditioner_eps(optimizer: str, kwargs: dict[str, Any]) -> float:
    """The ε an adaptive optimizer adds to √v: the config's, else torch's default (Adagrad
    1e-10, the others 1e-8)."""
    from stabsweep.optim.optimizers import optimizer_kwargs

    return float(optimizer_kwargs(optimizer, kwargs).get("eps", 1e-10 if optimizer == "adagrad" else 1e-8))


class PowerIteration:
    """The top eigenvalue of each trial's Hessian, every trial at once, from the step's graph.

    ``measure(loss, params, scale)``: ``loss`` is the step's per-trial losses [trials] (their
    sum's Hessian is block-diagonal over trials), ``params`` the tensors they depend on, each
    [trials, ...] (``batched``), or one trial's own tensors; ``scale(grads, used)``
    optionally gives D = P^-½ for the parameters ``used`` (those the loss reaches), from the
    optimizer's state or, at the first step, from ``grads``. Returns per-trial eigenvalues and
    residuals (numpy). ``keep(index)`` follows a batch's compaction.
    """

    def __init__(self, iterations: int = 20, seed: int = 0) -> None:
        self.iterations, self.seed = iterations, seed
        self.vectors: list[torch.Tensor] | None = None  # warm start: the last eigenvectors

    def keep(self, index: torch.Tensor) -> None:
        if self.vectors is not None and self.vectors[0].dim() and len(self.vectors[0]) > 1:
            self.vectors = [v[index] for v in self.vectors]

    def measure(
        self,
        loss: torch.Tensor,
        params: list[torch.Tensor],
        scale: Callable[[list[torch.Tensor], list[int]], list[torch.Tensor] | None] | None = None,
        batched: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        trials = loss.numel()
        found = torch.autograd.grad(loss.sum(), params, create_graph=True, allow_unused=True)
        used = [i for i, g in enumerate(found) if g is not None]  # a parameter the loss does not reach has no curvature
        params, grads = [params[i] for i in used], [found[i] for i in used]
        factors = scale([g.detach() for g in grads], used) if scale is not None else None

        def per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            return values.reshape([-1] + [1] * (like.dim() - 1)) if like.dim() else values.reshape(())

        def rows(vectors: list[torch.Tensor], other: list[torch.Tensor]) -> torch.Tensor:
            return sum((a * b).reshape(trials, -1).sum(1) for a, b in zip(vectors, other, strict=True))

        def normalized(vectors: list[torch.Tensor]) -> list[torch.Tensor]:
            norm = rows(vectors, vectors).sqrt().clamp_min(1e-30)
            return [v / per_row(norm, v) for v in vectors]

        def product(vectors: list[torch.Tensor]) -> list[torch.Tensor]:
            scaled = [v * d for v, d in zip(vectors, factors, strict=True)] if factors else vectors
            dot = sum((g * v).sum() for g, v in zip(grads, scaled, strict=True))
            out = torch.autograd.grad(dot, params, retain_graph=True)
            return [o * d for o, d in zip(out, factors, strict=True)] if factors else list(out)

        # A cold start draws one vector per parameter and gives it to every trial, as each would
        # draw it alone: a trial's sharpness is the same in a batch and on its own.
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        fresh = [
            torch.randn(p.shape[1:] if batched else p.shape, generator=generator).to(p).expand_as(p).clone()
            for p in params
        ]
        warm = self.vectors is not None and [v.shape for v in self.vectors] == [p.shape for p in params]
        vectors = [v.detach().to(p) for v, p in zip(self.vectors, params, strict=True)] if warm else fresh
        lost = ~torch.isfinite(rows(vectors, vectors))  # a trial whose last measurement was NaN starts afresh
        if bool(lost.any()):
            vectors = [torch.where(per_row(lost, v), f, v) for v, f in zip(vectors, fresh, strict=True)]
        vectors = normalized(vectors)
        shift = torch.zeros(trials, device=loss.device, dtype=vectors[0].dtype)
        iterations = self.iterations if warm else 3 * self.iterations  # from a random vector: further to go
        for phase in range(2):  # the dominant eigenvalue; then, where it is negative, that of H − μI
            for _ in range(iterations):
                hv = product(vectors)
                if phase:
                    hv = [h - per_row(shift, h) * v for h, v in zip(hv, vectors, strict=True)]
                vectors = normalized([h.detach() for h in hv])
            value = rows(vectors, product(vectors)).detach()
            negative = value < 0
            if phase or not bool(negative.any()):
                break
            shift = torch.where(negative, value, shift)
        hv = product(vectors)
        value = rows(vectors, hv).detach()
        off = [h.detach() - per_row(value, h) * v for h, v in zip(hv, vectors, strict=True)]
        residual = rows(off, off).sqrt() / value.abs().clamp_min(1e-30)
        self.vectors = [v.detach() for v in vectors]
        return value.float().cpu().numpy(), residual.float().cpu().numpy()


class SharpnessLog:
    """``train.log_sharpness_every``: each trial's sharpness at every N-th step, measured by
    :class:`PowerIteration` on the step's own graph (the preconditioned sharpness for an
    adaptive optimizer). A side feature: a measurement that raises (a custom autograd Function
    without a double backward, say) stops the log with a note, never the trial."""

    def __init__(self, every: int, iterations: int, optimizer: Any, count: int, batched: bool = True) -> None:
        from stabsweep.analysis.curvature import PRECONDITIONED

        self.every, self.optimizer, self.batched = every, optimizer, batched
        self.adaptive = optimizer.name in PRECONDITIONED
        self.power = PowerIteration(iterations)
        self.records: list[list[tuple[int, float, float]]] = [[] for _ in range(count)]
        self.note: str | None = None

    def due(self, step: int) -> bool:
        """Whether to measure before update ``step`` + 1. An adaptive optimizer's first
        measurement waits for its state (the preconditioner of the first update, √(g²), is
        not the one the threshold is about): from step ``every`` on."""
        if not self.every or step % self.every or self.note is not None:
            return False
        return step > 0 or not self.adaptive

    def measure(
        self,
        step: int,
        loss: torch.Tensor,
        params: list[torch.Tensor],
        trials: Sequence[int],
        states: Callable[[], list[dict[str, Any] | None]] | None = None,
    ) -> None:
        """Measure at ``step`` (0-based: the weights before update ``step`` + 1) for ``trials``
        (the record index of each row). ``states()``: each parameter's optimizer state (the
        per-parameter view of its tensors), for the preconditioner."""
        scale = None
        if self.adaptive:
            optimizer = self.optimizer

            def scale(grads: list[torch.Tensor], used: list[int]) -> list[torch.Tensor]:
                every = states() if states is not None else None
                found = [every[i] for i in used] if every is not None else [None] * len(grads)
                return [
                    adam_preconditioner(g, optimizer.name, optimizer.kwargs, state or None).rsqrt()
                    for g, state in zip(grads, found, strict=True)
                ]

        try:
            values, residuals = self.power.measure(loss, params, scale, self.batched)
        except (RuntimeError, NotImplementedError, TypeError) as exc:  # a side feature never fails a trial
            self.note = f"sharpness not logged from step {step}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            return
        for row, trial in enumerate(trials):
            self.records[trial].append((step, float(values[row]), float(residuals[row])))

    def log(self, trial: int) -> tuple[tuple[int, float, float], ...] | None:
        return tuple(self.records[trial]) if self.every else None
