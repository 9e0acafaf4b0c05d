"""The README's CI jobs parse, run the committed smoke config and baseline, and every file and
image the README names exists."""

from __future__ import annotations

import re

import yaml

from .conftest import ROOT

README = (ROOT / "README.md").read_text()


def ci_jobs() -> list[dict]:
    """The README's YAML blocks that are CI files (they start with the file's name as a comment)."""
    blocks = re.findall(r"```yaml\n(# \.git[^\n]*\n.*?)```", README, flags=re.S)
    return [yaml.safe_load(block) for block in blocks]


def test_the_ci_jobs_parse_and_gate_the_smoke_config_on_its_baseline():
    blocks = ci_jobs()
    assert len(blocks) == 2
    github = next(b for b in blocks if "jobs" in b)
    gitlab = next(b for b in blocks if "stability" in b)
    steps = " ".join(str(step.get("run", "")) for step in github["jobs"]["smoke"]["steps"])
    script = " ".join(gitlab["stability"]["script"])
    for commands in (steps, script):
        assert "stabsweep lr configs/smoke.yaml --baseline configs/smoke.baseline.json --junit" in commands
        assert "torch==2.13.0" in commands  # pinned: an unpinned torch pulls CUDA
    assert gitlab["stability"]["artifacts"]["reports"]["junit"] == "junit.xml"
    assert (ROOT / "configs" / "smoke.yaml").is_file() and (ROOT / "configs" / "smoke.baseline.json").is_file()


def test_every_image_and_file_the_readme_names_exists():
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / image).is_file(), image
    for link in re.findall(r"\]\(((?:docs|configs|examples)/[^)#]+)", README):
        assert (ROOT / link).exists(), link
