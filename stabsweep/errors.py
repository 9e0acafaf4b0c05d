"""The one exception type that means "the user gave us something wrong".

Commands turn a :class:`UserError` into exit code 2 and a single message, never a
traceback: a bad config is the user's to fix, not a crash of ours.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a config, a path or an argument. Rendered as one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """A ' (did you mean 'x'?)' hint for a misspelt name, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
