"""Choosing the torch device: ``auto`` prefers CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stabsweep.errors import UserError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device: '{name}' asked for, but this torch build sees no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device: '{name}' asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device: 'mps' asked for, but MPS is not available here; use --device cpu")
    return device
