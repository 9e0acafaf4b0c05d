"""The number types a user may write in a config: integers and finite floats, never booleans.

YAML's ``true`` is the integer 1 to pydantic's lax mode, so ``steps: true`` would train one
step; these types refuse it. Shared by the config schema and the schedule arguments, which
sit on different layers (docs/architecture.md), hence their own module.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, not {str(value).lower()}")
    return value


Int = Annotated[int, BeforeValidator(_not_a_bool)]
Float = Annotated[float, BeforeValidator(_not_a_bool), Field(allow_inf_nan=False)]
