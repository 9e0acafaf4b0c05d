"""Gradient clipping rules: the threshold λ in force at each step, for a batch of trials.

A clip replaces g by λ·g/‖g‖ when ‖g‖ > λ (``torch.nn.utils.clip_grads_with_norm_`` does the
scaling for one trial; the vectorized engine applies the same formula to stacked gradients).
The rules here only decide λ, from the *unclipped* global norm:

- fixed: a constant λ (``inf`` for a trial that does not clip);
- percentile (AutoClip, Seetharaman et al. 2020): λ is the p-th percentile of the last
  ``window`` unclipped norms, the current one included;
- z-score (ZClip, Kumar et al. 2025): an exponential moving average of the norm's mean and
  variance; λ = mean + z·std, and the EMA is fed the clipped norm so one spike does not
  raise the bar for the next. The first ``warmup`` steps only observe.

Every rule works on a vector of norms, one per trial, with per-trial settings, so one batch
can sweep thresholds; a single trial is a batch of one. All state stays on the gradient's
device as tensors: deciding λ never synchronises with the host. ``keep(rows)`` drops the
trials a batch has finished with. These rules are written by hand because torch ships only
the scaling, not adaptive thresholds.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from stabsweep.config.schema import ClipConfig


def clip_kind(config: ClipConfig | None) -> str:
    """Trials of one kind can share a batch: "fixed" (a threshold or none), "percentile", "zscore"."""
    if config is None or config.threshold is not None:
        return "fixed"
    return "percentile" if config.percentile is not None else "zscore"


class FixedClip:
    def __init__(self, configs: list[ClipConfig | None], device: torch.device) -> None:
        import torch

        values = [math.inf if c is None else c.threshold for c in configs]
        self.values = torch.tensor(values, dtype=torch.float32, device=device)

    def threshold(self, norms: torch.Tensor, step: int) -> torch.Tensor:
        return self.values

    def keep(self, rows: torch.Tensor) -> None:
        self.values = self.values[rows]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"values": self.values}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.values = state["values"].to(self.values.device)


class PercentileClip:
    def __init__(self, configs: list[ClipConfig], device: torch.device) -> None:
        import torch

        self.windows = torch.tensor([c.window for c in configs], device=device)
        self.q = torch.tensor([c.percentile / 100.0 for c in configs], device=device)
        self.same_q = len({c.percentile for c in configs}) == 1
        # Shorter windows leave their extra columns NaN, which nanquantile ignores.
        self.history = torch.full((len(configs), max(c.window for c in configs)), math.nan, device=device)

    def threshold(self, norms: torch.Tensor, step: int) -> torch.Tensor:
        import torch

        rows = torch.arange(len(norms), device=norms.device)
        self.history[rows, step % self.windows] = norms.detach().to(self.history.dtype)
        if self.same_q:
            return torch.nanquantile(self.history, self.q[0], dim=1)
        return torch.nanquantile(self.history, self.q, dim=1).diagonal()  # row i at its own q_i

    def keep(self, rows: torch.Tensor) -> None:
        self.windows, self.q, self.history = self.windows[rows], self.q[rows], self.history[rows]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"windows": self.windows, "q": self.q, "history": self.history}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        device = self.history.device
        self.windows, self.q, self.history = (state[k].to(device) for k in ("windows", "q", "history"))


class ZScoreClip:
    _STATE = ("z", "decay", "warmup", "mean", "var")

    def __init__(self, configs: list[ClipConfig], device: torch.device) -> None:
        import torch

        def column(key: str) -> torch.Tensor:
            return torch.tensor([float(getattr(c, key)) for c in configs], device=device)

        self.z, self.decay, self.warmup = column("zscore"), column("ema_decay"), column("warmup")
        self.mean = torch.zeros(len(configs), device=device)
        self.var = torch.zeros(len(configs), device=device)

    def threshold(self, norms: torch.Tensor, step: int) -> torch.Tensor:
        import torch

        norms = norms.detach()
        if step == 0:
            self.mean.copy_(norms)
            return torch.full_like(norms, math.inf)
        clipping = self.warmup <= step
        bar = self.mean + self.z * self.var.sqrt()
        seen = torch.where(clipping, norms.minimum(bar), norms)
        # A non-finite norm leaves the statistics alone; clipping cannot rescue it anyway.
        delta = torch.where(norms.isfinite(), seen - self.mean, 0.0)
        self.mean.add_((1 - self.decay) * delta)
        self.var.mul_(self.decay).add_(self.decay * (1 - self.decay) * delta * delta)
        return torch.where(clipping, bar, math.inf)

    def keep(self, rows: torch.Tensor) -> None:
        for name in self._STATE:
            setattr(self, name, getattr(self, name)[rows])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self._STATE}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        device = self.mean.device
        for name in self._STATE:
            setattr(self, name, state[name].to(device))


Clipper = FixedClip | PercentileClip | ZScoreClip


def build_clipper(configs: list[ClipConfig | None], device: torch.device) -> Clipper | None:
    """The rule for a batch of trials of one :func:`clip_kind`; None when no trial clips."""
    if all(c is None for c in configs):
        return None
    kinds = {clip_kind(c) for c in configs}
    if len(kinds) != 1:
        raise ValueError(f"one batch cannot mix clipping kinds {sorted(kinds)}")
    kind = kinds.pop()
    if kind == "fixed":
        return FixedClip(configs, device)
    return PercentileClip(configs, device) if kind == "percentile" else ZScoreClip(configs, device)
