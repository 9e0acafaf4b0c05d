"""The exceptions that end a command with an exit code of their own.

Commands turn a :class:`UserError` into exit code 2 and a single message, never a
traceback: a bad config is the user's to fix, not a crash of ours. A :class:`RunFailed` is a
run that completed with a result the user must act on: exit code 3.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class UserError(Exception):
    """Bad input: a config, a path or an argument. Rendered as one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StalePlan(UserError):
    """--resume met finished trials that ran with other settings than the plan now gives them
    (an upstream finding moved, or the user changed what a trial is)."""


class ConfigKeyError(ValueError):
    """A config value is wrong at a key below the one being validated (``[2]`` of a list, an
    argument of a schedule): the loader adds ``key`` to the path it names."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key, self.message = key, message


class RunFailed(Exception):
    """The run completed and its files are written, but its result is a failure the user must
    act on (nothing trained, a check failed). Exit code 3, after the summary is printed."""

    exit_code = 3

    def __init__(self, summary: dict[str, Any]) -> None:
        super().__init__(summary.get("verdict", "the run failed"))
        self.summary = summary


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """A ' (did you mean 'x'?)' hint for a misspelt name, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, never expanding a deep or huge structure
    (a YAML alias bomb is a billion elements behind a few references)."""
    import reprlib

    shorter = reprlib.Repr()
    shorter.maxstring = shorter.maxother = limit
    shorter.maxlevel, shorter.maxlist, shorter.maxdict = 3, 4, 4
    text = shorter.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_USER_CODE = "_stabsweep_raised_in_user_code"


@contextmanager
def user_code() -> Iterator[None]:
    """Mark an exception raised inside as the user's: their factory, data, model, loss or
    backward. A trial that raises there failed; one that raises anywhere else met a bug of
    stabsweep's, which is exit 1 with its traceback, never blamed on the user."""
    try:
        yield
    except Exception as exc:
        setattr(exc, _USER_CODE, True)
        raise


def raised_in_user_code(exc: BaseException) -> bool:
    """Whether ``exc`` came out of the user's code (see :func:`user_code`)."""
    return bool(getattr(exc, _USER_CODE, False))
