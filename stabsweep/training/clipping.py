"""Gradient clipping rules: the threshold λ in force at each step.

A clip replaces g by λ·g/‖g‖ when ‖g‖ > λ (``torch.nn.utils.clip_grads_with_norm_`` does the
scaling). The rules here only decide λ, from the *unclipped* global norm:

- fixed: a constant λ;
- percentile (AutoClip, Seetharaman et al. 2020): λ is the p-th percentile of the last
  ``window`` unclipped norms, the current one included;
- z-score (ZClip, Kumar et al. 2025): an exponential moving average of the norm's mean and
  variance; λ = mean + z·std, and the EMA is fed the clipped norm so one spike does not
  raise the bar for the next. The first ``warmup`` steps only observe.

All state stays on the gradient's device as tensors: deciding λ never synchronises with the
host, so clipping adds no stall to a GPU step. These rules are written by hand because
torch ships only the scaling, not adaptive thresholds.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from stabsweep.config.schema import ClipConfig


class FixedClip:
    def __init__(self, threshold: float) -> None:
        self.value = threshold

    def threshold(self, norm: torch.Tensor, step: int) -> torch.Tensor | float:
        return self.value


class PercentileClip:
    def __init__(self, percentile: float, window: int, device: torch.device) -> None:
        import torch

        self.q = percentile / 100.0
        self.history = torch.full((window,), math.nan, device=device)

    def threshold(self, norm: torch.Tensor, step: int) -> torch.Tensor:
        import torch

        self.history[step % len(self.history)] = norm.detach()
        return torch.nanquantile(self.history, self.q)


class ZScoreClip:
    def __init__(self, zscore: float, ema_decay: float, warmup: int, device: torch.device) -> None:
        import torch

        self.z, self.decay, self.warmup = zscore, ema_decay, warmup
        self.mean = torch.zeros((), device=device)
        self.var = torch.zeros((), device=device)

    def threshold(self, norm: torch.Tensor, step: int) -> torch.Tensor | float:
        norm = norm.detach()
        if step == 0:
            self.mean.copy_(norm)
            return math.inf
        import torch

        clipping = step >= self.warmup
        bar = self.mean + self.z * self.var.sqrt()
        seen = norm.minimum(bar) if clipping else norm
        # A non-finite norm leaves the statistics alone; clipping cannot rescue it anyway.
        delta = torch.where(norm.isfinite(), seen - self.mean, 0.0)
        self.mean.add_((1 - self.decay) * delta)
        self.var.mul_(self.decay).add_(self.decay * (1 - self.decay) * delta * delta)
        return bar if clipping else math.inf


Clipper = FixedClip | PercentileClip | ZScoreClip


def build_clipper(config: ClipConfig | None, device: torch.device) -> Clipper | None:
    if config is None:
        return None
    if config.threshold is not None:
        return FixedClip(config.threshold)
    if config.percentile is not None:
        return PercentileClip(config.percentile, config.window, device)
    return ZScoreClip(config.zscore, config.ema_decay, config.warmup, device)
