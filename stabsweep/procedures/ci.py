"""A gated command in CI: run it, compare with ``--baseline``, write CI's formats, exit 3 on a regression.

The command runs as always (its files written, its verdict printed); then, when a baseline is
given, ``analysis/gate.py`` compares the two ``stability`` blocks, the result goes into
``summary.json`` as ``gate`` and on the console one line per criterion; then ``--junit``,
``--markdown`` and ``$GITHUB_STEP_SUMMARY`` are written (also when nothing trained, so CI shows
why). A failed criterion ends the command with exit 3 after everything is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stabsweep.analysis.gate import compare, differences
from stabsweep.errors import RunFailed, UserError
from stabsweep.procedures.context import Context
from stabsweep.report import ci
from stabsweep.results.runs import read_baseline
from stabsweep.results.store import read_table, write_summary

STEP_SUMMARY = "GITHUB_STEP_SUMMARY"


@dataclass(frozen=True)
class CiRequest:
    baseline: Path | None = None
    baseline_any: bool = False
    junit: Path | None = None
    markdown: Path | None = None

    @property
    def wanted(self) -> bool:
        return bool(self.baseline or self.junit or self.markdown or os.environ.get(STEP_SUMMARY))


def run_gated(ctx: Context, command: str, run: Callable[[], dict[str, Any]], request: CiRequest) -> dict[str, Any]:
    """Run ``run`` (the command's procedure) and everything of the module docstring after it."""
    if not request.wanted:
        return run()
    baseline = read_baseline(request.baseline, command) if request.baseline else None  # bad input before training
    try:
        summary = run()
    except RunFailed as exc:
        _write_outputs(ctx, command, exc.summary, None, request)
        raise
    gate = None
    if baseline is not None:
        gate = _gate(ctx, command, summary, baseline, request.baseline_any)
        summary["gate"] = gate
        write_summary(ctx.run_root / command, summary)
    _write_outputs(ctx, command, summary, gate, request)
    if gate is not None and not gate["passed"]:
        raise RunFailed(summary)
    return summary


def _gate(
    ctx: Context, command: str, summary: dict[str, Any], baseline: tuple[Path, dict[str, Any]], any_setup: bool
) -> dict[str, Any]:
    path, old = baseline
    new_block, old_block = summary["stability"], old["stability"]
    differ = differences(old_block, new_block)
    if differ and not any_setup:
        raise UserError(
            f"--baseline {path}: another setup than this run ({'; '.join(differ)}); compare anyway with "
            f"--baseline-any (this run's results are kept: add --resume to skip training)"
        )
    gate_config = ctx.config.gate
    criteria = compare(old_block, new_block, gate_config.unstable_factor, gate_config.objective_tolerance)
    passed = all(c.passed for c in criteria)
    console = ctx.console
    console.print(f"stability gate against {path}: {'passed' if passed else 'FAILED'}", markup=False)
    for criterion in criteria:
        console.print(f"  {'✓' if criterion.passed else '✗'} {criterion.name}: {criterion.message}", markup=False)
    for line in differ:
        console.print(f"  (setups differ, compared with --baseline-any: {line})", markup=False)
    return {
        "baseline": str(path),
        "passed": passed,
        "criteria": [c.as_dict() for c in criteria],
        "setup_differences": differ,
        "thresholds": gate_config.model_dump(),
    }


def _write_outputs(
    ctx: Context, command: str, summary: dict[str, Any], gate: dict[str, Any] | None, request: CiRequest
) -> None:
    trials_path = ctx.run_root / command / "trials.csv"
    text = ci.markdown(command, summary, gate, title=ctx.config.name)
    if request.junit:
        trials = read_table(trials_path) if trials_path.is_file() else None
        _write(request.junit, ci.junit(command, summary, trials, gate), "--junit")
    if request.markdown:
        _write(request.markdown, text, "--markdown")
    step_summary = os.environ.get(STEP_SUMMARY)
    if step_summary:
        _write(Path(step_summary), text + "\n", f"${STEP_SUMMARY}", append=True)


def _write(path: Path, text: str, what: str, append: bool = False) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a" if append else "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot be written ({exc.strerror or exc})") from None
