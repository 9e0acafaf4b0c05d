"""One self-contained HTML page for a run: every stage's verdict, findings, plots and config.

The page needs nothing but a browser: the plots are embedded as PNG data, the style is inline,
there is no script (the trials and the config fold away in ``<details>``, which browsers open
without JavaScript). Everything from the run's files is escaped.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

ORDER = ("doctor", "find", "lr", "curvature", "warmup", "clip", "tune")  # the playbook's order
TITLES = {
    "doctor": "doctor: is the model correct?",
    "find": "find: the learning-rate range test",
    "lr": "lr: the learning-rate sweep",
    "curvature": "curvature: sharpness against the optimizer's stability threshold",
    "warmup": "warmup: the shortest warmup at a higher rate",
    "clip": "clip-report: gradient norms and clipping",
    "tune": "tune: the stability frontier",
}
NOT_FINDINGS = {"command", "config", "verdict", "warnings", "next_command", "rules", "stability", "gate", "curve"}
TRIAL_COLUMNS = (
    "trial_id",
    "lr",
    "phase",
    "mitigation",
    "base_lr",
    "warmup_steps",
    "clip_threshold",
    "seed",
    "status",
    "reason",
    "best_eval_loss",
    "final_train_loss",
    "diverged_step",
    "steps_run",
    "error",
)
FIRST_PLOTS = ("frontier", "lr_sweep", "range_test", "base_rate", "warmup_sweep", "grad_norms", "layers")  # shown first
MAX_ROWS = 500
STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1b1f23; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 2.2em; border-bottom: 1px solid #d0d7de; }
nav a { margin-right: 1em; } .meta { color: #57606a; }
.verdict { background: #f6f8fa; border-left: 4px solid #0969da; padding: 0.6em 1em; }
.warning { background: #fff8c5; border-left: 4px solid #d4a72c; padding: 0.3em 1em; margin: 0.3em 0; }
.gate-pass { border-left: 4px solid #1a7f37; padding: 0.3em 1em; } .gate-fail { border-left: 4px solid #cf222e;
       padding: 0.3em 1em; background: #ffebe9; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ok td.status { color: #1a7f37; } tr.unstable td.status { color: #9a6700; }
tr.diverged td.status, tr.failed td.status, tr.learned_nothing td.status { color: #cf222e; }
img { max-width: 100%; border: 1px solid #d0d7de; margin: 0.5em 0; } figure { margin: 1em 0; }
figcaption { color: #57606a; font-size: 0.85em; } code, pre { background: #f6f8fa; padding: 0.1em 0.3em; }
.wide { overflow-x: auto; } pre { padding: 0.8em; overflow-x: auto; }
details { margin: 0.6em 0; } summary { cursor: pointer; }
"""


@dataclass
class Stage:
    """What one command wrote under the run folder."""

    name: str
    folder: Path
    summary: dict[str, Any]
    trials: pd.DataFrame | None = None
    config: str | None = None
    plots: list[Path] = field(default_factory=list)


def page(run: Path, stages: list[Stage], version: str) -> str:
    """The whole page, as text."""
    e = html.escape
    nav = " ".join(f'<a href="#{s.name}">{e(s.name)}</a>' for s in stages)
    body = [
        f"<h1>stabsweep report: {e(run.name)}</h1>",
        f'<p class="meta">run folder <code>{e(str(run))}</code> · stabsweep {e(version)} · '
        f"{len(stages)} stage{'s' if len(stages) != 1 else ''}</p>",
        f"<nav>{nav}</nav>",
        "<h2>At a glance</h2><ul>",
        *(f'<li><a href="#{e(s.name)}">{e(s.name)}</a>: {e(str(s.summary.get("verdict", "")))}</li>' for s in stages),
        "</ul>",
    ]
    for stage in stages:
        body += _stage(stage)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>stabsweep report: {e(run.name)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _stage(stage: Stage) -> list[str]:
    e, s = html.escape, stage.summary
    out = [f'<h2 id="{e(stage.name)}">{e(TITLES.get(stage.name, stage.name))}</h2>']
    out.append(f'<p class="verdict">{e(str(s.get("verdict", "no verdict")))}</p>')
    out += [f'<p class="warning">⚠ {e(str(w))}</p>' for w in s.get("warnings") or []]
    if s.get("gate"):
        out += _gate(s["gate"])
    if s.get("next_command"):
        out.append(f"<p>Next: <code>{e(str(s['next_command']))}</code></p>")
    findings = {k: v for k, v in s.items() if k not in NOT_FINDINGS and _scalar(v)}
    if findings:
        out.append("<h3>Findings</h3>")
        out.append(_table(["finding", "value"], [[k, v] for k, v in findings.items()]))
    for key, value in s.items():
        if key not in NOT_FINDINGS and _records(value):
            out.append(f"<h3>{e(key.replace('_', ' '))}</h3>")
            columns = list(dict.fromkeys(c for row in value for c in row if _scalar(row.get(c))))
            out.append(_table(columns, [[row.get(c) for c in columns] for row in value[:MAX_ROWS]]))
    for plot in sorted(stage.plots, key=_plot_order):
        data = base64.b64encode(plot.read_bytes()).decode("ascii")
        out.append(
            f'<figure><img alt="{e(plot.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(stage.name)}/plots/{e(plot.name)}</figcaption></figure>"
        )
    if stage.trials is not None and len(stage.trials):
        trials = stage.trials
        columns = [c for c in TRIAL_COLUMNS if c in trials.columns and trials[c].notna().any()]
        rows = trials[columns].head(MAX_ROWS).to_dict("records")
        more = f", the first {MAX_ROWS} shown" if len(trials) > MAX_ROWS else ""
        out.append(f"<details><summary>trials.csv ({len(trials)} trials{more})</summary>")
        out.append(_table(columns, [[r[c] for c in columns] for r in rows], status_column="status" in columns))
        out.append("</details>")
    if s.get("rules"):
        rules = [[k, v if _scalar(v) else str(v)] for k, v in s["rules"].items()]
        out.append("<details><summary>the rules applied</summary>" + _table(["rule", "meaning"], rules) + "</details>")
    if stage.config:
        out.append(f"<details><summary>config.yaml</summary><pre>{e(stage.config)}</pre></details>")
    return out


def _plot_order(path: Path) -> tuple[int, str]:
    return (FIRST_PLOTS.index(path.stem) if path.stem in FIRST_PLOTS else len(FIRST_PLOTS), path.stem)


def _gate(gate: dict[str, Any]) -> list[str]:
    e = html.escape
    passed = gate.get("passed")
    out = [
        f'<div class="{"gate-pass" if passed else "gate-fail"}"><p><b>Stability gate</b> against '
        f"<code>{e(str(gate.get('baseline')))}</code>: {'passed' if passed else 'FAILED'}</p><ul>"
    ]
    for c in gate.get("criteria", []):
        mark, name, message = "✓" if c.get("passed") else "✗", e(str(c.get("name"))), e(str(c.get("message")))
        out.append(f"<li>{mark} <code>{name}</code>: {message}</li>")
    out.append("</ul></div>")
    return out


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(row, dict) for row in value)


def _cell(value: Any) -> tuple[str, bool]:
    """A value as table text, and whether it is a number (right-aligned)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–", False
    if isinstance(value, bool):
        return str(value).lower(), False
    if isinstance(value, float):
        return f"{value:.4g}", True
    if isinstance(value, int):
        return str(value), True
    if hasattr(value, "value"):  # an enum (a trial status)
        return str(value.value), False
    return str(value), False


def _table(header: list[str], rows: list[list[Any]], status_column: bool = False) -> str:
    e = html.escape
    index = header.index("status") if status_column else -1
    lines = [
        '<div class="wide"><table><thead><tr>'
        + "".join(f"<th>{e(str(h))}</th>" for h in header)
        + "</tr></thead><tbody>"
    ]
    for row in rows:
        status = _cell(row[index])[0] if index >= 0 else ""
        cells = []
        for i, value in enumerate(row):
            text, number = _cell(value)
            kind = "status" if i == index else ("num" if number else "")
            cells.append(f'<td class="{kind}">{e(text)}</td>' if kind else f"<td>{e(text)}</td>")
        lines.append(f'<tr class="{e(status)}">' + "".join(cells) + "</tr>")
    lines.append("</tbody></table></div>")
    return "\n".join(lines)
