"""Telling the user what happened: console output, plots and summary.json."""
