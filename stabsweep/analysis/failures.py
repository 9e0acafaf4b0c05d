"""When nothing trained: every trial raised. The verdict quotes the error once, and where."""

from __future__ import annotations

import re
from typing import Any

from stabsweep.records import TrialStatus


def nothing_trained(trials: Any) -> str | None:
    """The verdict when no trial of ``trials`` trained (each one raised), else None.

    Trials of one sweep share the workload, so they usually fail alike: the first error is
    quoted once, with the place in the user's code it was raised (the reason says where),
    and other errors are counted, not repeated.
    """
    if len(trials) and not (trials["status"] == TrialStatus.FAILED).all():
        return None
    if not len(trials):
        return "Nothing trained: no trial ran."
    errors = trials["error"].fillna("an unknown error").astype(str)
    first = trials.iloc[0]
    where = re.search(r" at (\S+:\d+)", str(first["reason"]))
    text = f"Nothing trained: every trial ({len(trials)}) failed. The first raised {errors.iloc[0]}"
    text += f" (at {where.group(1)})." if where else "."
    others = errors.nunique() - 1
    if others:
        text += f" {others} other error{'s' * (others > 1)} in the 'error' column of trials.csv."
    return text
