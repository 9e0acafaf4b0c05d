"""``stabsweep spikes RUN``: a finished run's loss spikes, which batch caused each, data or optimizer.

Reads a command's folder (``RUN/lr`` by default; any folder with trials.csv and steps.csv),
detects and attributes the spikes with the rule of ``analysis/spikes.py`` (its thresholds
from the run's saved config, or ``--sigma``/``--window``), rewrites ``spikes.csv``, prints the
spikes and the batches ranked by how many trials they hit, and draws ``plots/spikes.png``.
Needs no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stabsweep.analysis.spikes import detect, ranked_batches, summary_of
from stabsweep.errors import UserError
from stabsweep.report import plots
from stabsweep.report.console import make_console, trials_table
from stabsweep.results.store import SPIKES, read_table


def stage_folder(run: Path) -> Path:
    """The command folder to read: ``run`` itself when it holds trials, else ``run/lr``, else the first stage."""
    if (run / "trials.csv").is_file():
        return run
    for name in ("lr", "tune", "warmup", "clip"):
        if (run / name / "trials.csv").is_file():
            return run / name
    raise UserError(f"{run}: no trials.csv here or in lr/, tune/, warmup/ or clip/: not a finished stabsweep run")


def run(
    run_folder: Path, *, sigma: float | None = None, window: int | None = None, quiet: bool = False
) -> dict[str, Any]:
    if not run_folder.is_dir():
        raise UserError(f"{run_folder}: run folder not found")
    if sigma is not None and sigma <= 0:
        raise UserError(f"--sigma {sigma:g}: expected a positive number of standard deviations")
    if window is not None and window < 2:
        raise UserError(f"--window {window}: expected at least 2 steps")
    folder = stage_folder(run_folder)
    sigma, window = _thresholds(folder, sigma, window)
    trials, steps = read_table(folder / "trials.csv"), read_table(folder / "steps.csv")
    spikes = detect(steps, trials, sigma, window)
    spikes.to_csv(folder / SPIKES, index=False)
    summary = {
        "command": "spikes",
        "folder": str(folder),
        "sigma": sigma,
        "window": window,
        **summary_of(spikes, trials),
    }
    console = make_console(quiet=quiet)
    if len(spikes):
        console.print(
            trials_table(
                spikes,
                ["lr", "seed", "step", "epoch", "batch", "loss", "z", "grad_norm_z", "recovered_step", "kind"],
                f"spikes ({sigma:g} σ over {window} steps)",
            )
        )
        console.print(
            trials_table(
                ranked_batches(spikes),
                ["seed", "epoch", "batch", "step", "trials", "lowest_lr", "highest_lr", "kind"],
                "batches, by trials hit",
            )
        )
    title = f"{folder.parent.name} · {folder.name}: training loss, spikes by cause"
    try:
        plots.spikes(steps, trials, spikes, folder / "plots" / "spikes.png", title=title)
    except Exception as exc:  # noqa: BLE001 - a plot must never fail a command
        summary["warnings"] = [f"plot spikes.png not drawn: {type(exc).__name__}: {exc}"]
    verdict = (
        summary["sentence"]
        or f"No spikes: no step's loss or gradient norm rose {sigma:g} σ above the {window} before it."
    )
    summary["verdict"] = verdict
    console.print(f"\nVerdict: {verdict}", markup=False, soft_wrap=True)
    console.print(f"Results in {folder / SPIKES}", markup=False)
    return summary


def _thresholds(folder: Path, sigma: float | None, window: int | None) -> tuple[float, int]:
    """--sigma and --window, else the run's detect.spike_sigma and spike_window, else the defaults."""
    from stabsweep.config.schema import DetectConfig

    saved: dict[str, Any] = {}
    if (folder / "config.yaml").is_file():
        import yaml

        try:
            saved = (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("detect") or {}
        except yaml.YAMLError:
            saved = {}
    default = DetectConfig()
    return (
        float(sigma if sigma is not None else saved.get("spike_sigma", default.spike_sigma)),
        int(window if window is not None else saved.get("spike_window", default.spike_window)),
    )
