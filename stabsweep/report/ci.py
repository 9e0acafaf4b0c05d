"""A run in CI's own formats: JUnit XML and a Markdown summary.

JUnit XML (the schema Jenkins, GitLab and the GitHub test-report actions read): one test suite
for the gate, a test case per criterion, and one for the trials, a test case per trial. A trial
that diverged is a finding, not a failed test: a trial case fails only when the trial raised
(status ``failed``) or when the gate found its rate feasible in the baseline and infeasible
now. The Markdown summary is what ``$GITHUB_STEP_SUMMARY`` shows on the run's page: the
findings table, the verdict, the gate's lines.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from stabsweep.records import TrialStatus

if TYPE_CHECKING:
    import pandas as pd

PASS, FAIL = "✅", "❌"


def junit(command: str, summary: dict[str, Any], trials: pd.DataFrame | None, gate: dict[str, Any] | None) -> str:
    """The JUnit XML document of a run, as text."""
    root = ET.Element("testsuites", name=f"stabsweep {command}")
    if gate is not None:
        suite = ET.SubElement(root, "testsuite", name=f"stabsweep {command}: stability gate")
        for criterion in gate["criteria"]:
            case = ET.SubElement(suite, "testcase", classname=f"stabsweep.{command}.gate", name=criterion["name"])
            if not criterion["passed"]:
                failure = ET.SubElement(case, "failure", message=criterion["message"], type="StabilityRegression")
                failure.text = f"baseline {gate['baseline']}: {criterion['message']}"
            else:
                ET.SubElement(case, "system-out").text = criterion["message"]
        _count(suite)
    if trials is not None and len(trials):
        lost = set()
        for criterion in (gate or {}).get("criteria", []):
            if criterion["name"] == "feasible_rates" and not criterion["passed"]:
                lost = {round(lr, 12) for lr in criterion["baseline"]} - {round(lr, 12) for lr in criterion["current"]}
        suite = ET.SubElement(root, "testsuite", name=f"stabsweep {command}: trials")
        for row in trials.to_dict("records"):
            status = TrialStatus.of(row["status"])
            case = ET.SubElement(suite, "testcase", classname=f"stabsweep.{command}.trials", name=trial_name(row))
            reason = f"{status.value}: {_text(row.get('reason'))}"
            if status is TrialStatus.FAILED:
                failure = ET.SubElement(case, "failure", message=_text(row.get("error")) or reason, type="TrialRaised")
                failure.text = reason
            elif not status.feasible and round(float(row["lr"]), 12) in lost:
                message = f"feasible in the baseline, {reason} now"
                ET.SubElement(case, "failure", message=message, type="StabilityRegression").text = message
            else:
                ET.SubElement(case, "system-out").text = reason
            seconds = row.get("wall_seconds")
            if isinstance(seconds, float) and math.isfinite(seconds):
                case.set("time", f"{seconds:.3f}")
        _count(suite)
    _count(root, over=root.findall("testsuite"))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _count(element: ET.Element, over: list[ET.Element] | None = None) -> None:
    if over is None:
        cases = element.findall("testcase")
        tests, failures = len(cases), sum(1 for c in cases if c.find("failure") is not None)
    else:
        tests = sum(int(s.get("tests", 0)) for s in over)
        failures = sum(int(s.get("failures", 0)) for s in over)
    element.set("tests", str(tests))
    element.set("failures", str(failures))
    element.set("errors", "0")


def trial_name(row: dict[str, Any]) -> str:
    """'trial 3: lr=0.316 seed=0', with the swept columns a command adds (mitigation, clip ...)."""
    parts = [f"trial {int(row['trial_id'])}: lr={float(row['lr']):.4g}"]
    for key in ("phase", "mitigation", "warmup_steps", "clip_threshold"):
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)) and value not in ("sweep", 0):
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    parts.append(f"seed={int(row['seed'])}")
    return " ".join(parts)


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def markdown(command: str, summary: dict[str, Any], gate: dict[str, Any] | None, title: str = "") -> str:
    """The run as Markdown: findings table, verdict, gate lines, next command."""
    lines = [f"### stabsweep {command}{f': {title}' if title else ''}", ""]
    lines += _findings(command, summary)
    lines += ["", f"**Verdict.** {summary.get('verdict', '')}", ""]
    for warning in summary.get("warnings") or []:
        lines.append(f"> ⚠️ {warning}")
    if gate is not None:
        result = f"{PASS} passed" if gate["passed"] else f"{FAIL} FAILED"
        lines += ["", f"**Stability gate** against `{gate['baseline']}`: {result}", ""]
        for criterion in gate["criteria"]:
            lines.append(f"- {PASS if criterion['passed'] else FAIL} `{criterion['name']}`: {criterion['message']}")
    if summary.get("next_command"):
        lines += ["", f"Next: `{summary['next_command']}`"]
    return "\n".join(lines) + "\n"


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


def _findings(command: str, summary: dict[str, Any]) -> list[str]:
    if command == "lr" and summary.get("rates"):
        rows = []
        for rate in summary["rates"]:
            counts = ", ".join(f"{rate[s.value]} {s.value}" for s in TrialStatus if rate.get(s.value))
            note = []
            if summary.get("best_lr") is not None and math.isclose(rate["lr"], summary["best_lr"]):
                note.append("lr*")
            if summary.get("unstable_base_lr") is not None and math.isclose(rate["lr"], summary["unstable_base_lr"]):
                note.append("unstable base lr")
            rows.append(
                [
                    _fmt(rate["lr"]),
                    counts,
                    _fmt(rate["p_unstable"], ".2f"),
                    _fmt(rate["objective_mean"]),
                    ", ".join(note),
                ]
            )
        return _table(["lr", "seeds", "p_unstable", summary.get("objective", "objective"), "note"], rows)
    if command == "tune" and summary.get("mitigations"):
        rows = [
            [
                m["mitigation"],
                _fmt(m["best_lr"]),
                _fmt(m["best_objective"]),
                _fmt(m["unstable_base_lr"]),
                "chosen" if m["mitigation"] == summary.get("chosen") else "",
            ]
            for m in summary["mitigations"]
        ]
        return _table(["mitigation", "best lr", "best objective", "unstable at", "note"], rows)
    if command == "find":
        rows = [[name, _fmt(rate)] for name, rate in (summary.get("suggestions") or {}).items()]
        rows.append(["divergence", _fmt(summary.get("divergence_lr"))])
        return _table(["suggestion", "learning rate"], rows)
    block = summary.get("stability") or {}
    rows = [[key, _fmt(block.get(key))] for key in ("best_lr", "unstable_base_lr", "best_objective")]
    return _table(["finding", "value"], rows)
