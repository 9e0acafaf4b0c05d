"""Bad input of every kind: exit 2, one message naming the file or option, the key and what was
expected, and never a traceback. Plus a fuzz test of the config loader, two writers on one
folder, and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from stabsweep.cli import app
from stabsweep.config.loader import load_config, parse_overrides
from stabsweep.errors import UserError

from .conftest import ROOT

runner = CliRunner()

BASE = """\
name: t
workload: {name: mlp, args: {hidden: 8, depth: 1}, batch_size: 32}
train: {steps: 10, eval_every: 5, optimizer: {name: momentum}}
lr_sweep: {lrs: [0.05, 50.0]}
"""


def base_with(**blocks: str) -> str:
    """BASE with top-level blocks replaced or added (``train="{steps: -1}"``)."""
    lines = [line for line in BASE.splitlines() if line.split(":")[0] not in blocks]
    return "\n".join([*lines, *(f"{key}: {value}" for key, value in blocks.items())]) + "\n"


FACTORY_FILES = {
    "syntax.py": "def build(seed:\n",
    "raises_on_import.py": "raise RuntimeError('import-time bug')\n",
    "no_seed.py": "def build(width=3):\n    return None\n",
    "returns_str.py": "def build(seed):\n    return 'a model'\n",
    "raises.py": "def build(seed):\n    raise ValueError('bug in my factory')\n",
    "good.py": "from stabsweep.workloads.mlp import build\n",
}

# (id, config text (None: the file is not written), extra CLI args, expected fragments)
CONFIG_CASES = [
    ("unknown top key", BASE + "trian: {}\n", [], ["trian", "did you mean 'train'"]),
    ("unknown nested key", base_with(detect="{divergence_facter: 3}"), [], ["detect.divergence_facter"]),
    ("steps negative", base_with(train="{steps: -3}"), [], ["train.steps", "greater than or equal to 1"]),
    ("steps word", base_with(train="{steps: lots}"), [], ["train.steps", "valid integer"]),
    ("steps bool", base_with(train="{steps: true}"), [], ["train.steps", "not true"]),
    ("steps huge", base_with(train="{steps: 1.0e+26}"), [], ["train.steps"]),
    ("steps 1e26 string", base_with(train="{steps: 1e26}"), [], ["train.steps", "integer"]),
    ("steps float", base_with(train="{steps: 10.5}"), [], ["train.steps", "integer"]),
    ("eval_every zero", base_with(train="{eval_every: 0}"), [], ["train.eval_every"]),
    ("lrs nan", base_with(lr_sweep="{lrs: [.nan]}"), [], ["lr_sweep.lrs[0]", "positive number"]),
    ("lrs inf", base_with(lr_sweep="{lrs: [0.1, .inf]}"), [], ["lr_sweep.lrs[1]"]),
    ("lrs word", base_with(lr_sweep="{lrs: [abc]}"), [], ["lr_sweep.lrs[0]", "positive number", "'abc'"]),
    ("lrs empty", base_with(lr_sweep="{lrs: []}"), [], ["lr_sweep.lrs", "non-empty list"]),
    ("lrs negative", base_with(lr_sweep="{lrs: [0.1, -1]}"), [], ["lr_sweep.lrs[1]"]),
    ("lrs bool", base_with(lr_sweep="{lrs: [true]}"), [], ["lr_sweep.lrs[0]"]),
    ("lrs scalar", base_with(lr_sweep="{lrs: 0.1}"), [], ["lr_sweep.lrs", "list of learning rates"]),
    ("grid reversed", base_with(lr_sweep="{lrs: {min: 1, max: 0.1, num: 3}}"), [], ["greater than min"]),
    ("grid nan", base_with(lr_sweep="{lrs: {min: .nan, max: 1, num: 3}}"), [], ["lr_sweep.lrs.min", "finite"]),
    ("grid num 1", base_with(lr_sweep="{lrs: {min: 0.1, max: 1, num: 1}}"), [], ["lr_sweep.lrs.num"]),
    ("seed negative", BASE + "seed: -1\n", [], ["seed"]),
    ("seed word", BASE + "seed: zero\n", [], ["seed", "integer"]),
    ("device tpu", BASE + "device: tpu\n", [], ["device", "cuda"]),
    ("name traversal", base_with(name="../../tmp/x"), [], ["name", "one folder name"]),
    ("name absolute", base_with(name="/etc"), [], ["name", "one folder name"]),
    ("name empty", base_with(name="''"), [], ["name"]),
    ("name missing", BASE.replace("name: t\n", ""), [], ["name", "missing"]),
    ("optimizer unknown", base_with(train="{optimizer: adamm}"), [], ["train.optimizer", "did you mean 'adam'"]),
    ("optimizer kwarg typo", base_with(train="{optimizer: {name: sgd, momentun: 0.9}}"), [], ["momentun"]),
    ("optimizer nan", base_with(train="{optimizer: {name: sgd, momentum: .nan}}"), [], ["momentum", "finite"]),
    ("optimizer bool", base_with(train="{optimizer: {name: sgd, momentum: true}}"), [], ["momentum", "not true"]),
    ("optimizer lr", base_with(train="{optimizer: {name: sgd, lr: 0.1}}"), [], ["train.optimizer.lr"]),
    ("schedule unknown", base_with(train="{schedule: cosin}"), [], ["train.schedule", "did you mean 'cosine'"]),
    ("schedule arg", base_with(train="{schedule: {name: warmup, warmup_steps: -3}}"), [], ["warmup_steps", "1"]),
    ("schedule after", base_with(train="{schedule: {name: warmup, after: exp}}"), [], ["train.schedule.after"]),
    ("clip two rules", base_with(train="{clip: {percentile: 90, threshold: 1}}"), [], ["exactly one"]),
    ("clip zero", base_with(train="{clip: 0}"), [], ["train.clip.threshold"]),
    ("clip percentile", base_with(train="{clip: {percentile: 120}}"), [], ["train.clip.percentile"]),
    ("warmup steps", BASE + "warmup_sweep: {warmup_steps: [-3]}\n", [], ["warmup_sweep.warmup_steps[0]"]),
    ("warmup multipliers", BASE + "warmup_sweep: {multipliers: [0]}\n", [], ["warmup_sweep.multipliers[0]"]),
    ("detect spike", BASE + "detect: {early_spike_factor: 5}\n", [], ["early_spike_factor", "divergence_factor"]),
    ("workload both", base_with(workload="{name: mlp, factory: 'x.py:build'}"), [], ["exactly one"]),
    ("workload unknown", base_with(workload="{name: mpl}"), [], ["workload", "did you mean 'mlp'"]),
    ("batch size zero", base_with(workload="{name: mlp, batch_size: 0}"), [], ["workload.batch_size"]),
    ("workload arg", base_with(workload="{name: mlp, args: {hiden: 3}}"), [], ["workload.args.hiden"]),
    ("execution engine", BASE + "execution: {engine: fast}\n", [], ["execution.engine"]),
    ("max_batch", BASE + "execution: {max_batch: 0}\n", [], ["execution.max_batch"]),
    ("checkpoint_every", BASE + "execution: {checkpoint_every: -1}\n", [], ["execution.checkpoint_every"]),
    ("gate factor below 1", BASE + "gate: {unstable_factor: 0.5}\n", [], ["gate.unstable_factor", "1"]),
    ("gate tolerance word", BASE + "gate: {objective_tolerance: some}\n", [], ["gate.objective_tolerance"]),
    ("gate unknown key", BASE + "gate: {unstable_facter: 2}\n", [], ["gate.unstable_facter"]),
    ("warmup_steps negative", base_with(train="{warmup_steps: -5}"), [], ["train.warmup_steps"]),
    ("baseline missing", BASE, ["--baseline", "nowhere.json"], ["--baseline nowhere.json", "no such file"]),
    ("top is a list", "- a list\n", [], ["mapping"]),
    ("top is empty", "", [], ["mapping"]),
    ("bad yaml", "name: [unclosed\n", [], ["invalid YAML", ":2:"]),
    ("duplicate key", BASE + "name: u\n", [], ["key 'name' is written twice (lines 1 and 5)"]),
    ("deep nesting", "a: " + "[" * 5000 + "]" * 5000 + "\n", [], ["config.yaml"]),
    (
        "alias bomb",
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
        + BASE
        + "seed: *f\n",
        [],
        ["seed"],
    ),
    ("missing file", None, [], ["config file not found"]),
    # command-line options
    ("set unknown", BASE, ["--set", "train.stepz=3"], ["--set train.stepz", "did you mean 'steps'"]),
    ("set no equals", BASE, ["--set", "train.steps"], ["--set train.steps", "key.sub=value"]),
    ("set bad yaml", BASE, ["--set", "a=[1"], ["--set a=[1", "not valid YAML"]),
    ("set into scalar", BASE + "seed: 3\n", ["--set", "seed.x=1"], ["--set seed.x", "not a mapping"]),
    ("set below a missing key", BASE, ["--set", "seed.x=1"], ["--set seed.x", "valid integer"]),
    ("set lrs nan", BASE, ["--set", "lr_sweep.lrs=[.nan]"], ["--set lr_sweep.lrs", "lr_sweep.lrs[0]"]),
    ("device flag", BASE, ["--device", "tpu"], ["--device", "expected auto, cpu"]),
    ("device missing gpu", BASE, ["--device", "cuda:7"], ["device"]),
    ("engine flag", BASE, ["--engine", "fast"], ["--engine"]),
    ("workers zero", BASE, ["--workers", "0"], ["--workers"]),
    ("resume and force", BASE, ["--resume", "--force"], ["--resume and --force"]),
    # user factories
    (
        "factory missing file",
        base_with(workload="{factory: 'nowhere.py:build'}"),
        [],
        ["workload.factory", "not found"],
    ),
    ("factory syntax", base_with(workload="{factory: 'syntax.py:build'}"), [], ["workload.factory", "SyntaxError"]),
    (
        "factory import raises",
        base_with(workload="{factory: 'raises_on_import.py:build'}"),
        [],
        ["workload.factory", "import-time bug"],
    ),
    ("factory no function", base_with(workload="{factory: 'good.py:biuld'}"), [], ["did you mean 'build'"]),
    ("factory no seed", base_with(workload="{factory: 'no_seed.py:build'}"), [], ["must accept a 'seed'"]),
    ("factory returns str", base_with(workload="{factory: 'returns_str.py:build'}"), [], ["returned str"]),
    ("factory raises", base_with(workload="{factory: 'raises.py:build'}"), [], ["bug in my factory"]),
    ("factory bad module", base_with(workload="{factory: 'no_such_module_xyz:build'}"), [], ["cannot import"]),
    ("factory no colon", base_with(workload="{factory: 'good.py'}"), [], ["workload", "file.py:function"]),
]


def _write_case(tmp_path, text):
    for name, source in FACTORY_FILES.items():
        (tmp_path / name).write_text(source)
    config = tmp_path / "config.yaml"
    if text is not None:
        config.write_text(text)
    return config


def assert_clean_exit_2(result, expected):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    for fragment in expected:
        assert fragment in result.output, result.output
    assert len(result.output) < 1000, "one message, not an expansion of the input"


@pytest.mark.parametrize(("text", "args", "expected"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_or_option_exits_2_naming_the_key(tmp_path, monkeypatch, text, args, expected):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    config = _write_case(tmp_path, text)
    result = runner.invoke(app, ["lr", str(config), "--out", str(tmp_path / "out"), *args])
    assert_clean_exit_2(result, expected)


def test_a_config_that_is_not_utf8_is_named(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes(BASE.replace("name: t", "name: t\u00e9").encode("latin-1"))
    assert_clean_exit_2(runner.invoke(app, ["lr", str(config)]), [str(config), "not a UTF-8 text file"])


def test_out_pointing_at_a_file_is_named(tmp_path):
    config = _write_case(tmp_path, BASE)
    taken = tmp_path / "a_file"
    taken.write_text("not a folder")
    result = runner.invoke(app, ["lr", str(config), "--out", str(taken)])
    assert_clean_exit_2(result, [str(taken), "not a folder"])


RUN_FOLDER_CASES = [
    ("no such folder", lambda root: None, ["warmup", "--from", "{root}/missing"], ["run folder not found"]),
    ("no summary", lambda root: (root / "lr").mkdir(parents=True), ["warmup", "--from", "{root}"], ["summary.json"]),
    (
        "summary not json",
        lambda root: _summary(root, "{not json"),
        ["warmup", "--from", "{root}"],
        ["not valid JSON"],
    ),
    (
        "summary of another command",
        lambda root: _summary(root, json.dumps({"command": "warmup"})),
        ["warmup", "--from", "{root}"],
        ["not the summary of a `stabsweep lr` run"],
    ),
    (
        "no unstable rate",
        lambda root: _summary(root, json.dumps({"command": "lr", "unstable_base_lr": None})),
        ["warmup", "--from", "{root}"],
        ["found no unstable rate"],
    ),
    (
        "clip without steps",
        lambda root: _summary(root, json.dumps({"command": "lr", "unstable_trial_id": 0})),
        ["clip-report", "{root}"],
        ["missing"],
    ),
    ("both sources", lambda root: None, ["warmup", "--from", "{root}", "--unstable-lr", "1"], ["exactly one"]),
    ("negative rate", lambda root: None, ["warmup", "{config}", "--unstable-lr", "-1"], ["positive"]),
    ("clip neither", lambda root: None, ["clip-report", "{root}/nothing"], ["neither a run folder nor a config"]),
    ("clip config no lr", lambda root: None, ["clip-report", "{config}"], ["needs --lr"]),
]


def _summary(root, text):
    (root / "lr").mkdir(parents=True)
    (root / "lr" / "summary.json").write_text(text)
    (root / "lr" / "config.yaml").write_text(BASE)


@pytest.mark.parametrize(
    ("make", "args", "expected"), [c[1:] for c in RUN_FOLDER_CASES], ids=[c[0] for c in RUN_FOLDER_CASES]
)
def test_bad_run_folder_exits_2_naming_what_is_missing(tmp_path, make, args, expected):
    config = _write_case(tmp_path, BASE)
    root = tmp_path / "run"
    make(root)
    args = [a.format(root=root, config=config) for a in args]
    assert_clean_exit_2(runner.invoke(app, [*args, "--out", str(tmp_path / "out")]), expected)


def test_the_corpus_is_large():
    assert len(CONFIG_CASES) + len(RUN_FOLDER_CASES) + 3 >= 50


# --- fuzzing the loader: random YAML trees and --set strings -------------------------------

KEYS = ["name", "seed", "device", "workload", "train", "lr_sweep", "steps", "lrs", "clip", "optimizer", "x"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
trees = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS), children, max_size=4),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=st.dictionaries(st.sampled_from(KEYS), trees, max_size=6), base=st.booleans())
def test_random_yaml_trees_give_a_valid_config_or_a_clean_user_error(tmp_path, tree, base):
    data = {**yaml.safe_load(BASE), **tree} if base else tree
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_config(path)
    except UserError as exc:
        assert "\n" not in exc.message and str(path) in exc.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.text(alphabet="abcdelnprstuvw_.=[]{}:,0123456789-+ ", max_size=30), max_size=4))
def test_random_set_strings_give_a_valid_config_or_a_clean_user_error(tmp_path, items):
    path = tmp_path / "base.yaml"
    path.write_text(BASE)
    try:
        load_config(path, parse_overrides(items))
    except UserError as exc:
        assert "\n" not in exc.message


# --- two writers, and Ctrl-C ------------------------------------------------------------

SLOW = """\
# stabsweep lr slow.yaml
name: slow
device: cpu
workload: {name: mlp, args: {hidden: 32, depth: 1}, batch_size: 32}
train: {steps: 4000, eval_every: 100, optimizer: momentum}
lr_sweep: {lrs: [0.001, 0.003, 0.01, 0.03]}
"""


def _start(config, out, *flags):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "stabsweep", "lr", str(config), "--out", str(out), "--engine", "sequential"]
    return subprocess.Popen(
        [*command, *flags], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _wait_for_trials(out, count, process):
    trials = out / "lr" / "trials.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if trials.exists() and len(trials.read_text().splitlines()) > count:
            return
        time.sleep(0.05)
    pytest.fail("the sweep did not get going")


@pytest.mark.slow
def test_a_second_writer_on_the_same_folder_is_refused_then_ctrl_c_keeps_finished_trials(tmp_path):
    config = tmp_path / "slow.yaml"
    config.write_text(SLOW)
    out = tmp_path / "out"
    first = _start(config, out, "-q")
    try:
        _wait_for_trials(out, 1, first)  # the header and one finished trial
        second = runner.invoke(app, ["lr", str(config), "--out", str(out), "--resume"])
        assert_clean_exit_2(second, ["another stabsweep is writing here", f"pid {first.pid}"])

        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the whole group
        _, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, stderr
    assert "rerun with --resume" in stderr and "Traceback" not in stderr
    lines = (out / "lr" / "trials.csv").read_text().splitlines()
    assert len(lines) >= 2 and all(line.count(",") == lines[0].count(",") for line in lines)
    from stabsweep.results import lock

    lock.hold(out / "lr")  # the lock went with the process that held it
    lock.release_all()
