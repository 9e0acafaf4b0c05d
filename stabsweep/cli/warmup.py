"""``stabsweep warmup``."""

from __future__ import annotations


def warmup() -> None:
    """Warmup sweep at 10× the unstable rate (not built yet)."""
    raise SystemExit("stabsweep warmup is not built yet")
