"""The stability gate (``--baseline``) and CI's formats (``--junit``, ``--markdown``,
``$GITHUB_STEP_SUMMARY``): against the committed smoke baseline, against tampered ones, and
every way a baseline can be bad input."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from stabsweep.analysis.gate import compare, differences, range_stability, stability_block
from stabsweep.cli import app

from .conftest import CONFIGS, MINIMAL

runner = CliRunner()
BASELINE = CONFIGS / "smoke.baseline.json"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke sweep once; the gated runs below resume it (nothing retrains) and compare."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    result = runner.invoke(app, ["lr", str(CONFIGS / "smoke.yaml"), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out


def gated(smoke_run, tmp_path, baseline, *extra, env=None):
    args = ["lr", str(CONFIGS / "smoke.yaml"), "--out", str(smoke_run), "--resume", "--baseline", str(baseline)]
    return runner.invoke(app, [*args, *map(str, extra)], env=env)


def tampered(tmp_path, change) -> str:
    summary = json.loads(BASELINE.read_text())
    change(summary["stability"])
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(summary))
    return path


def test_the_smoke_sweep_passes_its_committed_baseline(smoke_run, tmp_path):
    junit, markdown, step_summary = tmp_path / "junit.xml", tmp_path / "summary.md", tmp_path / "step.md"
    step_summary.write_text("earlier step\n")
    result = gated(
        smoke_run,
        tmp_path,
        BASELINE,
        "--junit",
        junit,
        "--markdown",
        markdown,
        env={"GITHUB_STEP_SUMMARY": str(step_summary)},
    )
    assert result.exit_code == 0, result.output
    assert "stability gate against" in result.output and "passed" in result.output
    summary = json.loads((smoke_run / "lr" / "summary.json").read_text())
    assert summary["gate"]["passed"] and [c["name"] for c in summary["gate"]["criteria"]] == [
        "unstable_base_lr",
        "best_objective",
        "feasible_rates",
    ]
    root = ET.parse(junit).getroot()
    trials = len(summary["rates"])
    assert (root.get("tests"), root.get("failures")) == (str(3 + trials), "0")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert suites["stabsweep lr: stability gate"].get("tests") == "3"
    assert len(suites["stabsweep lr: trials"].findall("testcase")) == trials
    text = markdown.read_text()
    assert "| lr | seeds | p_unstable |" in text and "✅ passed" in text and summary["verdict"] in text
    assert step_summary.read_text() == "earlier step\n" + text + "\n"  # appended, not overwritten


def test_a_baseline_with_a_wider_stable_range_fails_with_exit_3(smoke_run, tmp_path):
    def wider(block):
        block["unstable_base_lr"] = 3.0
        for rate in block["rates"]:
            rate["feasible"] = rate["feasible"] or rate["lr"] == 1.0

    junit = tmp_path / "junit.xml"
    result = gated(smoke_run, tmp_path, tampered(tmp_path, wider), "--junit", junit, "--json")
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    failed = {c["name"]: c for c in summary["gate"]["criteria"] if not c["passed"]}
    assert set(failed) == {"unstable_base_lr", "feasible_rates"}
    assert failed["unstable_base_lr"]["message"].startswith("fell: baseline 3 → now 1, 1 grid step down (3×")
    assert failed["feasible_rates"]["message"] == "feasible in the baseline, infeasible now: 1"
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "3"  # two criteria, and the trial at lr=1
    failures = [c.get("name") for c in root.iter("testcase") if c.find("failure") is not None]
    assert failures == ["unstable_base_lr", "feasible_rates", "trial 3: lr=1 seed=0"]


def test_a_worse_objective_fails_only_that_criterion(smoke_run, tmp_path):
    def better(block):
        block["best_objective"] *= 0.8

    result = gated(smoke_run, tmp_path, tampered(tmp_path, better), "--markdown", tmp_path / "m.md")
    assert result.exit_code == 3, result.output
    assert "✗ best_objective: baseline best_eval_loss" in result.output and "25.0% worse" in result.output
    assert "✓ unstable_base_lr" in result.output and "✓ feasible_rates" in result.output
    assert "❌ FAILED" in (tmp_path / "m.md").read_text()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file or folder"),
        ("{not json", "not JSON (Expecting property name"),
        ("[1, 2]", "not a stabsweep summary (no 'command' key)"),
        ('{"command": "warmup"}', "a summary of `stabsweep warmup`; expected the summary.json of a stabsweep lr run"),
        ('{"command": "lr", "verdict": "x"}', "no 'stability' block"),
        ('{"command": "lr", "nothing_trained": true}', "that run trained nothing"),
        (b"\xff\xfe", "cannot be read (UnicodeDecodeError"),
    ],
)
def test_bad_baselines_exit_2_naming_the_file(tmp_path, smoke_config, content, expected):
    path = tmp_path / "baseline.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    out = tmp_path / "never"
    result = runner.invoke(app, ["lr", str(smoke_config), "--out", str(out), "--baseline", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: --baseline {path}: ") and expected in result.output
    assert "Traceback" not in result.output and not out.exists()  # refused before any training


def test_a_folder_without_a_summary_is_bad_input(tmp_path, smoke_config):
    result = runner.invoke(app, ["lr", str(smoke_config), "--out", str(tmp_path / "x"), "--baseline", str(tmp_path)])
    assert result.exit_code == 2 and "a folder without lr/summary.json" in result.output


def test_a_baseline_of_another_setup_is_refused_unless_baseline_any(smoke_run, tmp_path):
    def other(block):
        block["setup"]["workload"]["args"]["hidden"] = 64

    baseline = tampered(tmp_path, other)
    result = gated(smoke_run, tmp_path, baseline)
    assert result.exit_code == 2, result.output
    assert "another setup than this run (workload: " in result.output and "--baseline-any" in result.output
    result = gated(smoke_run, tmp_path, baseline, "--baseline-any")
    assert result.exit_code == 0, result.output
    assert "setups differ, compared with --baseline-any: workload:" in result.output


def test_a_run_folder_is_a_baseline_too(smoke_run, tmp_path):
    result = gated(smoke_run, tmp_path, smoke_run)
    assert result.exit_code == 0, result.output


def test_nothing_trained_still_writes_junit_and_exits_3(tmp_path):
    factory = tmp_path / "broken.py"
    factory.write_text(
        "import torch, stabsweep\n"
        "def build(seed, batch_size=8):\n"
        "    x = torch.randn(32, 4)\n"
        "    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, 0]), batch_size=batch_size)\n"
        "    def loss(model, batch):\n"
        "        raise ValueError('shapes do not match')\n"
        "    return stabsweep.Workload(model=torch.nn.Linear(4, 1), train_data=data, loss=loss)\n"
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        "name: broken\nworkload: {factory: 'broken.py:build'}\ntrain: {steps: 5}\nlr_sweep: {lrs: [0.1]}\n"
    )
    junit = tmp_path / "junit.xml"
    result = runner.invoke(app, ["lr", str(config), "--out", str(tmp_path / "run"), "--junit", str(junit)])
    assert result.exit_code == 3, result.output
    failure = ET.parse(junit).getroot().find("testsuite/testcase/failure")
    assert failure is not None and "shapes do not match" in failure.get("message")


def test_an_unwritable_junit_path_is_bad_input(smoke_run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = gated(smoke_run, tmp_path, BASELINE, "--junit", blocker / "junit.xml")
    assert result.exit_code == 2 and f"--junit {blocker / 'junit.xml'}: cannot be written" in result.output


def test_find_is_gated_on_its_own_run(tmp_path, write_config):
    config = write_config(MINIMAL + "find: {steps: 60, min_lr: 1.0e-3, max_lr: 100}\n")
    out = tmp_path / "run"
    assert runner.invoke(app, ["find", str(config), "--out", str(out), "-q"]).exit_code == 0
    result = runner.invoke(app, ["find", str(config), "--out", str(out), "--resume", "--baseline", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "find" / "summary.json").read_text())
    assert [c["name"] for c in summary["gate"]["criteria"]] == ["unstable_base_lr", "best_objective"]


# -- the criteria on their own -----------------------------------------------------------------

SETUP = {"workload": {"name": "mlp"}, "steps": 60, "seeds": 1}
GRID = [0.01, 0.0316, 0.1, 0.316, 1.0]


def block(unstable, objective, feasible_up_to, grid=GRID):
    rates = [{"lr": r, "feasible": r <= feasible_up_to} for r in grid]
    return stability_block(0.1, unstable, objective, "best_eval_loss", rates, SETUP)


def test_the_unstable_rate_is_compared_in_grid_steps():
    baseline = block(0.316, 0.5, 0.1)
    one_step = compare(baseline, block(0.1, 0.5, 0.0316), 2.0, 0.05)[0]
    assert not one_step.passed and "1 grid step down (3.16×; a grid step is 3.16×)" in one_step.message
    assert compare(baseline, block(0.1, 0.5, 0.0316), 4.0, 0.05)[0].passed  # a looser gate lets one step pass
    assert compare(baseline, block(1.0, 0.5, 0.316), 2.0, 0.05)[0].passed  # rose: fine


def test_no_unstable_rate_in_the_grid_counts_as_one_step_past_the_top():
    stable = block(None, 0.5, 1.0)
    assert not compare(stable, block(0.316, 0.5, 0.1), 2.0, 0.05)[0].passed  # 2 steps down
    fell_to_top = compare(stable, block(1.0, 0.5, 0.316), 2.0, 0.05)[0]
    assert not fell_to_top.passed and "none in the grid (stable up to 1)" in fell_to_top.message
    assert compare(block(1.0, 0.5, 0.316), stable, 2.0, 0.05)[0].passed


def test_objective_tolerance_is_relative_and_nothing_feasible_fails():
    baseline = block(0.316, 0.5, 0.1)
    assert compare(baseline, block(0.316, 0.52, 0.1), 2.0, 0.05)[1].passed
    assert not compare(baseline, block(0.316, 0.53, 0.1), 2.0, 0.05)[1].passed
    assert not compare(baseline, block(0.316, None, 0.1), 2.0, 0.05)[1].passed


def test_ramps_compare_as_ratios_and_have_no_rate_criterion():
    baseline = range_stability(0.01, 3.0, 0.4, SETUP)
    criteria = compare(baseline, range_stability(0.01, 1.0, 0.4, SETUP), 2.0, 0.05)
    assert [c.name for c in criteria] == ["unstable_base_lr", "best_objective"]
    assert not criteria[0].passed and criteria[0].message.endswith("3×; the gate allows a fall of 2×")
    assert not compare(range_stability(0.01, None, 0.4, SETUP), range_stability(0.01, 1.0, 0.4, SETUP), 2, 0.05)[
        0
    ].passed


def test_differences_name_the_keys():
    other = copy.deepcopy(block(0.316, 0.5, 0.1, grid=[*GRID, 3.16]))
    other["setup"]["steps"] = 100
    assert differences(block(0.316, 0.5, 0.1), other) == [
        "lrs: 5 rates 0.01 … 1 → 6 rates 0.01 … 3.16",
        "steps: 60 → 100",
    ]
    assert differences(block(0.316, 0.5, 0.1), block(0.316, 0.5, 0.1)) == []
