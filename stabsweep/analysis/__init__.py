"""Turning per-step records into verdicts: the detection rules and the sweep's findings."""
