"""Skipping a spike's update (``train.skip_spikes``), OLMo-core's rule for a batch of trials.

OLMo-core's ``SkipStepOptimizer`` (``get_step_factor``) skips the update of a step whose loss or
gradient norm (before clipping) is more than ``sigma`` standard deviations above the mean of
the previous ``window`` steps, judged once ``max(2, window // 2)`` of them exist, with the
unbiased standard deviation; a skipped step leaves the weights and the optimizer state as
they were, and its loss and norm still enter the window. That is the semantics here; the
rule is written out because torch.optim has no skip-step wrapper, and it runs on the device
for every trial of a batch at once (a trial without ``skip_spikes`` never skips).
"""

from __future__ import annotations

from typing import Any

import torch

# Optimizers whose update depends on their step count (bias corrections, lr_decay): one shared
# count per batch cannot skip a step for one trial alone, so those trials run one at a time.
STEP_COUNTED = {"adam", "adamw", "amsgrad", "nadam"}


def rule_tensors(rules: list[Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``sigma`` (inf: never skips) and ``window``, as tensors [rows]."""
    sigma = torch.tensor([r.sigma if r is not None else float("inf") for r in rules], device=device)
    window = torch.tensor([r.window if r is not None else 2 for r in rules], device=device)
    return sigma, window


def skip_rows(
    losses: torch.Tensor,
    norms: torch.Tensor,
    loss: torch.Tensor,
    norm: torch.Tensor,
    sigma: torch.Tensor,
    window: torch.Tensor,
    width: int,
) -> torch.Tensor:
    """Which rows skip this update: ``losses``/``norms`` [rows, earlier steps] (at least the last
    ``width`` = the largest window), ``loss``/``norm`` [rows] this step's, ``sigma``/``window``
    [rows] from :func:`rule_tensors`. A bool tensor [rows] on their device, with no host sync."""
    device = losses.device
    recent_loss, recent_norm = losses[:, -width:].float(), norms[:, -width:].float()
    span = recent_loss.shape[1]
    # column j of the last `span` steps is within row r's window when it is among its last window_r
    within = torch.arange(span, device=device)[None, :] >= (span - window)[:, None]
    count = within.sum(1)
    judged = count >= torch.clamp(window // 2, min=2)

    def above(history: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros_like(history)
        mean = torch.where(within, history, zero).sum(1) / count.clamp(min=1)
        var = (torch.where(within, history - mean[:, None], zero) ** 2).sum(1)
        std = (var / (count - 1).clamp(min=1)).sqrt()
        return (value.float() - mean) > sigma * std

    return judged & (above(recent_loss, loss) | above(recent_norm, norm)) & torch.isfinite(sigma)
