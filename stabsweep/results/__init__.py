"""Where results live: one folder per command, CSVs appended as trials finish (DESIGN §4)."""

from stabsweep.results.store import ResultsStore

__all__ = ["ResultsStore"]
