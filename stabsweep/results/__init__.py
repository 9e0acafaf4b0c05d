"""Where results live: one folder per command, CSVs appended as trials finish (docs/contract.md, "Output files")."""

from stabsweep.results.store import ResultsStore

__all__ = ["ResultsStore"]
