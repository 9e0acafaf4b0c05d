"""``stabsweep clip-report``."""

from __future__ import annotations


def clip_report() -> None:
    """Gradient-norm report (not built yet)."""
    raise SystemExit("stabsweep clip-report is not built yet")
