"""Config loading: validation, did-you-mean, overrides, one clear message per mistake."""

from __future__ import annotations

import pytest
import yaml

from stabsweep.config import dump_config, load_config, parse_overrides
from stabsweep.errors import UserError

from .conftest import CONFIGS, MINIMAL


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load_and_name_their_command(name):
    path = CONFIGS / name
    assert path.read_text().startswith("# stabsweep ")
    load_config(path)


def test_defaults_fill_in(write_config):
    config = load_config(write_config(MINIMAL))
    assert config.detect.divergence_factor == 4.0
    assert config.warmup_sweep.multipliers == [10.0]
    assert config.lr_sweep.values() == [0.05, 50.0]


def test_log_grid_values():
    config = load_config(CONFIGS / "quickstart.yaml")
    values = config.lr_sweep.values()
    assert len(values) == 9 and values[0] == pytest.approx(1e-3) and values[-1] == pytest.approx(10)
    assert values[4] == pytest.approx(0.1)


def error_of(path, overrides=None) -> str:
    with pytest.raises(UserError) as info:
        load_config(path, overrides)
    message = info.value.message
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL.replace("train:", "trian:"), ["trian", "did you mean 'train'"]),
        (MINIMAL + "detect: {divergence_facter: 3}\n", ["detect.divergence_facter", "divergence_factor"]),
        (MINIMAL.replace("steps: 30", "steps: -3"), ["train.steps", "greater than or equal to 1"]),
        (MINIMAL.replace("steps: 30", "steps: lots"), ["train.steps", "valid integer"]),
        (MINIMAL.replace("name: momentum", "name: adamm"), ["train.optimizer", "did you mean 'adam'"]),
        (MINIMAL.replace("name: momentum", "name: sgd, momentun: 0.9"), ["momentun", "did you mean 'momentum'"]),
        (MINIMAL.replace("name: momentum", "name: sgd, momentum: -1"), ["train.optimizer", "rejected"]),
        (MINIMAL.replace("name: mlp", "name: mpl"), ["workload", "did you mean 'mlp'"]),
        (MINIMAL.replace("[0.05, 50.0]", "[0.05, -1]"), ["lr_sweep.lrs", "positive"]),
        (MINIMAL.replace("[0.05, 50.0]", "{min: 1, max: 0.1, num: 3}"), ["lr_sweep.lrs", "greater than min"]),
        (MINIMAL + "device: gpu\n", ["device", "cuda"]),
        (MINIMAL.replace("name: t\n", ""), ["name", "missing"]),
        (
            MINIMAL.replace("optimizer: {name: momentum}", "schedule: {name: cosine, warmup: 3}"),
            ["train.schedule", "min_factor"],
        ),
        (MINIMAL + "train: {steps: 3}\n", ["key 'train' is written twice (lines 3 and 5)"]),
    ],
)
def test_bad_configs_name_file_key_and_expectation(write_config, text, expected):
    path = write_config(text)
    message = error_of(path)
    assert message.startswith(str(path))
    for fragment in expected:
        assert fragment in message


def test_missing_file_and_bad_yaml(write_config, tmp_path):
    assert "not found" in error_of(tmp_path / "nope.yaml")
    message = error_of(write_config("name: [unclosed\n"))
    assert "invalid YAML" in message and ":2:" in message
    assert "mapping" in error_of(write_config("- a list\n"))


def test_overrides_apply_and_are_named_in_errors(write_config):
    path = write_config(MINIMAL)
    config = load_config(path, parse_overrides(["train.steps=7", "train.clip=2.5", "lr_sweep.lrs=[0.1]"]))
    assert config.train.steps == 7 and config.train.clip.threshold == 2.5
    assert config.lr_sweep.values() == [0.1]
    message = error_of(path, parse_overrides(["train.stepz=7"]))
    assert message.startswith("--set train.stepz") and "did you mean 'steps'" in message


@pytest.mark.parametrize("bad", ["train.steps", "=3", "a=[1"])
def test_malformed_override(bad):
    with pytest.raises(UserError, match="--set"):
        parse_overrides([bad])


def test_clip_forms(write_config):
    base = write_config(MINIMAL)
    assert load_config(base, {"train.clip": {"percentile": 90}}).train.clip.window == 1000
    assert load_config(base, {"train.clip": {"zscore": 2.5}}).train.clip.zscore == 2.5
    assert "exactly one" in error_of(base, {"train.clip": {"percentile": 90, "threshold": 1}})


def test_dump_round_trips(write_config, tmp_path):
    config = load_config(CONFIGS / "quickstart.yaml", {"train.clip": 1.0})
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(dump_config(config))
    again = load_config(dumped)
    assert again.model_dump() == config.model_dump()
    assert yaml.safe_load(dumped.read_text())["train"]["optimizer"]["momentum"] == 0.9


def test_optimizer_and_schedule_by_name_alone(write_config):
    config = load_config(
        write_config(MINIMAL.replace("optimizer: {name: momentum}", "optimizer: adam, schedule: cosine"))
    )
    assert config.train.optimizer.name == "adam" and config.train.schedule.name == "cosine"


def test_messages_name_no_internal_classes(write_config):
    path = write_config(MINIMAL)
    assert "mapping of keys" in error_of(path, {"workload": 5})
    assert "list of learning rates" in error_of(path, {"lr_sweep.lrs": "abc"})
