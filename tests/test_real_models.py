"""Real libraries' models, built from tiny configs without downloads (``tests/real_models.py``):
``doctor`` fails none of them. Needs the ``models`` test extra (transformers) for GPT-2 and
BERT; those tests skip without it."""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from stabsweep.cli import app

from .conftest import ROOT

runner = CliRunner()
needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="the models test extra (transformers) is not installed"
)

pytestmark = pytest.mark.slow


def doctor(tmp_path, factory: str, optimizer: str = "adam"):
    config = tmp_path / "doctor.yaml"
    config.write_text(
        f"name: real\ndevice: cpu\nworkload: {{factory: 'tests.real_models:{factory}'}}\n"
        f"train: {{steps: 100, optimizer: {optimizer}}}\n"
    )
    result = runner.invoke(app, ["doctor", str(config), "--out", str(tmp_path / "out"), "--json"])
    return result, json.loads(result.stdout) if result.stdout.strip().startswith("{") else None


@pytest.mark.parametrize(
    "factory",
    [pytest.param("gpt2", marks=needs_transformers), pytest.param("bert", marks=needs_transformers), "resnet"],
)
def test_doctor_fails_no_healthy_real_model(tmp_path, monkeypatch, factory):
    """GPT-2 with tied input and output embeddings and its own loss, BERT with attention masks
    and its own loss, a ResNet with BatchNorm: every check passes or warns, none fails."""
    monkeypatch.chdir(ROOT)
    result, summary = doctor(tmp_path, factory)
    assert result.exit_code == 0, result.output
    found = {c["name"]: c for c in summary["checks"]}
    assert all(c["status"] in ("pass", "warn") for c in found.values()), found
    assert found["gradient_check"]["status"] == "pass"  # tied weights are one tensor, checked once
    assert found["labels_in_range"]["measured"].startswith("targets from 0")  # read from a model's own loss too
    assert "not applicable" not in found["initial_loss"]["measured"]  # ln C, with num_classes
    if factory == "gpt2":
        assert "Embedding" in found["gradient_check"]["measured"]
        assert "adaptive step" in found["update_ratio"]["expected"]  # Adam's pace, not SGD's 1e-3
