"""``stabsweep report RUN``: one self-contained page, checked as text and in a real browser."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from stabsweep.cli import app

from .conftest import CONFIGS

runner = CliRunner()
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An lr sweep and a clip report of the smoke config, then the report."""
    out = tmp_path_factory.mktemp("report") / "run"
    smoke = str(CONFIGS / "smoke.yaml")
    assert runner.invoke(app, ["lr", smoke, "--out", str(out), "-q"]).exit_code == 0
    assert runner.invoke(app, ["clip-report", str(out), "-q"]).exit_code == 0
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert f"Report: {out / 'report.html'} (lr, clip)" in result.output
    return out


def test_the_page_holds_every_stage_its_values_and_its_plots(run):
    page = (run / "report.html").read_text()
    text = html.unescape(page)
    for stage in ("lr", "clip"):
        summary = json.loads((run / stage / "summary.json").read_text())
        assert summary["verdict"] in text and summary["next_command"] in text
    plots = sorted((run / "lr" / "plots").glob("*.png")) + sorted((run / "clip" / "plots").glob("*.png"))
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(plots) > 0
    assert {base64.b64decode(e) for e in embedded} == {p.read_bytes() for p in plots}
    assert "lr_sweep.png" in page and "<td>0.1</td>" not in page  # numbers are right-aligned cells
    assert '<td class="num">0.1</td>' in page
    assert "<script" not in page and "http://" not in page and "https://" not in page  # no JS, no network


def test_a_broken_stage_is_a_warning_on_the_page(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "clip" / "summary.json").write_text("{broken")
    assert runner.invoke(app, ["report", str(copy), "-o", str(tmp_path / "r.html")]).exit_code == 0
    assert "could not be read" in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize(("make", "expected"), [("missing", "run folder not found"), ("empty", "no stage of a")])
def test_not_a_run_is_bad_input(tmp_path, make, expected):
    folder = tmp_path / make
    if make == "empty":
        folder.mkdir()
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_the_page_renders_in_headless_chromium(run, tmp_path):
    browse = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    url = (run / "report.html").as_uri()
    dom = subprocess.run([*browse, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    summary = json.loads((run / "lr" / "summary.json").read_text())
    assert "stabsweep report: run" in dom and "lr: the learning-rate sweep" in dom
    assert f"{summary['best_lr']:g}" in dom and dom.count("data:image/png;base64,") >= 3
    shot = tmp_path / "shot.png"
    subprocess.run([*browse, "--window-size=1100,1400", f"--screenshot={shot}", url], capture_output=True, timeout=120)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1400, 1100) and pixels.std() > 0.05  # drawn: text, tables, plots
