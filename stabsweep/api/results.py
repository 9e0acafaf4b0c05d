"""What a command found, as Python objects: typed findings, the tables as DataFrames, the figures.

Every command's folder holds ``summary.json``, ``trials.csv``, ``steps.csv``, ``evals.csv``,
``config.yaml`` and ``plots/`` (docs/contract.md, "Files"); a result object is a view of one
such folder, so a run made a minute ago and one read back with :func:`open_run` a year later
are the same object. Reading needs pandas and matplotlib, never torch.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from stabsweep.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

STAGES = ("doctor", "find", "lr", "curvature", "warmup", "clip", "tune")  # the playbook's order (report/html.py's)


class Result:
    """One command's findings, read from its results folder.

    Attributes common to every command: ``command``, ``folder`` (the results folder, a
    ``Path``), ``summary`` (summary.json as a dict), ``verdict`` (str), ``warnings`` (list of
    str), ``next_command`` (the CLI command to run next, or None); ``trials``, ``steps`` and
    ``evals`` are the CSV files as pandas DataFrames (empty when the command wrote none).
    """

    command: ClassVar[str] = ""
    main_figure: ClassVar[str | None] = None  # the figure plot() draws when no name is given

    def __init__(self, folder: Path, summary: dict[str, Any], figures: dict[str, Figure] | None = None) -> None:
        self.folder = Path(folder)
        self.summary = summary
        self._figures = dict(figures or {})

    @property
    def verdict(self) -> str:
        return str(self.summary.get("verdict", ""))

    @property
    def warnings(self) -> list[str]:
        return list(self.summary.get("warnings") or [])

    @property
    def next_command(self) -> str | None:
        return self.summary.get("next_command")

    @functools.cached_property
    def trials(self) -> pd.DataFrame:
        return self._table("trials.csv")

    @functools.cached_property
    def steps(self) -> pd.DataFrame:
        return self._table("steps.csv")

    @functools.cached_property
    def evals(self) -> pd.DataFrame:
        return self._table("evals.csv")

    @functools.cached_property
    def spikes(self) -> pd.DataFrame:
        """spikes.csv: every loss spike, its batch and its cause (data or optimization)."""
        return self._table("spikes.csv")

    @functools.cached_property
    def sharpness(self) -> pd.DataFrame:
        """sharpness.csv (with train.log_sharpness_every): sharpness, threshold and their ratio per step."""
        return self._table("sharpness.csv")

    @property
    def config_path(self) -> Path:
        """The resolved config this command ran with (``stabsweep lr THIS_FILE`` reruns it)."""
        return self.folder / "config.yaml"

    def _table(self, name: str) -> pd.DataFrame:
        import pandas as pd

        from stabsweep.results.store import read_table

        path = self.folder / name
        return read_table(path) if path.is_file() else pd.DataFrame()

    @property
    def figure_names(self) -> list[str]:
        """The names ``plot()`` takes: the PNGs under ``plots/`` (``lr_sweep``, ``loss_curves``, ...)."""
        folder = self.folder / "plots"
        saved = [p.stem for p in sorted(folder.glob("*.png"))] if folder.is_dir() else []
        return sorted(set(saved) | set(self._figures))

    def plot(self, name: str | None = None) -> Figure:
        """One of the command's figures as a matplotlib Figure (Jupyter shows it inline).

        ``name``: a PNG's stem under ``plots/`` (see ``figure_names``); default the command's
        main figure (``lr_sweep`` for lr, ``frontier`` for tune, ...). A run made in this
        process hands back the figure it drew (axes that can be restyled); a run read back
        from disk shows its saved PNG in a figure of the same size. Raises UserError for a
        name the run has no figure of.
        """
        names = self.figure_names
        name = name or (self.main_figure if self.main_figure in names else (names[0] if names else None))
        if name is None or name not in names:
            known = ", ".join(names) or "none"
            raise UserError(f"{self.folder}: no figure {name!r} (this run has: {known})")
        _show_figures_inline()
        if name in self._figures:
            return self._figures[name]
        return _png_figure(self.folder / "plots" / f"{name}.png")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.folder}: {self.verdict}>"


class LrResult(Result):
    """``stabsweep lr``: ``best_lr`` and ``unstable_base_lr`` (learning rates, or None),
    ``p_unstable`` (share of the unstable rate's seeds that failed), ``rates`` (a DataFrame, a
    row per rate over its seeds). docs/contract.md, "lr"."""

    command = "lr"
    main_figure = "lr_sweep"

    @property
    def best_lr(self) -> float | None:
        return self.summary.get("best_lr")

    @property
    def unstable_base_lr(self) -> float | None:
        return self.summary.get("unstable_base_lr")

    @property
    def unstable_kind(self) -> str | None:
        return self.summary.get("unstable_kind")

    @property
    def p_unstable(self) -> float | None:
        return self.summary.get("p_unstable")

    @property
    def objective(self) -> str | None:
        return self.summary.get("objective")

    @property
    def best_objective(self) -> float | None:
        return self.summary.get("best_objective")

    @property
    def rate_independent(self) -> dict[str, Any] | None:
        """A failure the rate does not explain (same step at every rate, or NaN at once), or None."""
        return self.summary.get("rate_independent")

    @property
    def rates(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.summary.get("rates") or [])


class FindResult(Result):
    """``stabsweep find``: ``suggested_lr`` and ``divergence_lr`` (learning rates, or None),
    ``suggestions`` (name → rate), ``lr_grid`` (the grid for lr). docs/contract.md, "find"."""

    command = "find"
    main_figure = "range_test"

    @property
    def suggested_lr(self) -> float | None:
        return self.summary.get("suggested_lr")

    @property
    def divergence_lr(self) -> float | None:
        return self.summary.get("divergence_lr")

    @property
    def suggestions(self) -> dict[str, float]:
        return dict(self.summary.get("suggestions") or {})

    @property
    def lr_grid(self) -> dict[str, Any] | None:
        return self.summary.get("lr_grid")


class WarmupResult(Result):
    """``stabsweep warmup``: ``warmup_steps`` (the recommended linear warmup, steps, or None),
    ``base_lr`` (the rate it was probed at), ``unstable_base_lr``. docs/contract.md, "warmup"."""

    command = "warmup"
    main_figure = "warmup_sweep"

    @property
    def warmup_steps(self) -> int | None:
        return self.summary.get("recommended_warmup_steps")

    @property
    def base_lr(self) -> float | None:
        return self.summary.get("base_lr")

    @property
    def unstable_base_lr(self) -> float | None:
        return self.summary.get("unstable_base_lr")

    @property
    def baseline_ok(self) -> bool | None:
        return self.summary.get("baseline_ok")


class ClipResult(Result):
    """``stabsweep clip-report``: ``threshold`` (the gradient-norm percentile's value),
    ``percentile``, ``clipped_fraction`` (share of steps it clips), and with ``sweep`` the
    ``recommended_threshold``. docs/contract.md, "clip-report"."""

    command = "clip"
    main_figure = "grad_norm"

    @property
    def threshold(self) -> float | None:
        return self.summary.get("threshold")

    @property
    def percentile(self) -> float | None:
        return self.summary.get("percentile")

    @property
    def clipped_fraction(self) -> float | None:
        return self.summary.get("clipped_fraction")

    @property
    def recommended_threshold(self) -> float | None:
        return self.summary.get("recommended_threshold")


class DoctorResult(Result):
    """``stabsweep doctor``: ``checks`` (a DataFrame: name, status, measured, expected, advice),
    ``failed`` (the names of failed checks), ``passed`` (no check failed). docs/contract.md, "doctor"."""

    command = "doctor"
    main_figure = "layers"

    @property
    def checks(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.summary.get("checks") or [])

    @property
    def failed(self) -> list[str]:
        return [c["name"] for c in self.summary.get("checks") or [] if c.get("status") == "fail"]

    @property
    def passed(self) -> bool:
        return not self.failed


class TuneResult(Result):
    """``stabsweep tune``: ``chosen`` (the mitigation: none, warmup, clip or both), ``best_lr``
    and ``unstable_base_lr`` with it, ``recommended_config`` (a Path to train with),
    ``stages`` (the lr, warmup and clip results it ran). docs/contract.md, "tune"."""

    command = "tune"
    main_figure = "frontier"

    @property
    def chosen(self) -> str | None:
        return self.summary.get("chosen")

    @property
    def best_lr(self) -> float | None:
        return (self.summary.get("after") or {}).get("best_lr")

    @property
    def unstable_base_lr(self) -> float | None:
        return (self.summary.get("after") or {}).get("unstable_base_lr")

    @property
    def recommended_config(self) -> Path | None:
        path = self.summary.get("recommended_config")
        return Path(path) if path else None

    @property
    def stages(self) -> dict[str, Result]:
        root = self.folder.parent
        return {name: read_command(root / name) for name in ("lr", "warmup", "clip") if _has_summary(root / name)}


class CurvatureResult(Result):
    """``stabsweep curvature``: ``sharpness`` (λ₀, the top Hessian eigenvalue at initialisation;
    of P⁻¹H when ``preconditioned``), ``residual`` (‖Hv − λv‖/|λ|), ``predicted_edge`` (the
    optimizer's threshold / λ₀, a learning rate), ``edge_ratio`` (the lr run's unstable rate
    over it). docs/contract.md, "curvature"."""

    command = "curvature"

    @property
    def sharpness(self) -> float | None:
        return self.summary.get("sharpness")

    @property
    def preconditioned(self) -> bool:
        return bool(self.summary.get("preconditioned"))

    @property
    def residual(self) -> float | None:
        return self.summary.get("residual")

    @property
    def predicted_edge(self) -> float | None:
        return self.summary.get("predicted_edge")

    @property
    def edge_ratio(self) -> float | None:
        return self.summary.get("edge_ratio")


RESULTS: dict[str, type[Result]] = {
    cls.command: cls
    for cls in (LrResult, FindResult, WarmupResult, ClipResult, DoctorResult, TuneResult, CurvatureResult)
}


class Run:
    """A run folder (the ``--out`` of the commands): each stage found there as its result.
    ``stages`` maps a command's folder name to its result, in the playbook's order; each is
    also an attribute (``run.lr``, ``run.tune``, ...), None when absent."""

    def __init__(self, folder: Path, stages: dict[str, Result]) -> None:
        self.folder, self.stages = Path(folder), stages

    def __getattr__(self, name: str) -> Result | None:
        if name in STAGES:
            return self.stages.get(name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"<Run {self.folder}: {', '.join(self.stages)}>"


def result_of(folder: Path, summary: dict[str, Any], figures: dict[str, Figure] | None = None) -> Result:
    """The result object of the command whose folder is ``folder`` (its figures: those drawn
    under ``folder/plots``)."""
    mine = {Path(path).stem: fig for path, fig in (figures or {}).items() if Path(path).parent == folder / "plots"}
    cls = RESULTS.get(str(summary.get("command", folder.name)), Result)
    return cls(folder, summary, mine)


def read_command(folder: Path) -> Result:
    """The result of one command's folder (it holds summary.json)."""
    path = folder / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(summary, dict):
        raise UserError(f"{path}: not a stabsweep summary (expected a JSON object)")
    return result_of(folder, summary)


def open_run(path: str | Path) -> Run | Result:
    """Read a finished run without torch: a command's folder (``runs/x/lr``) as its result
    (:class:`LrResult`, ...), a run folder (``runs/x``) as a :class:`Run` of its stages.
    Raises UserError when ``path`` holds neither."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"{folder}: run folder not found")
    if _has_summary(folder):
        return read_command(folder)
    stages = {name: read_command(folder / name) for name in STAGES if _has_summary(folder / name)}
    if not stages:
        known = ", ".join(f"{name}/" for name in STAGES)
        raise UserError(f"{folder}: no stage of a stabsweep run here (looked for {known} with a summary.json)")
    return Run(folder, stages)


def _has_summary(folder: Path) -> bool:
    return (folder / "summary.json").is_file()


def _png_figure(path: Path) -> Figure:
    """A saved PNG shown in a figure of its own size (120 dpi, as it was saved)."""
    import matplotlib.image as mpimg
    from matplotlib.figure import Figure

    image = mpimg.imread(path)
    height, width = image.shape[:2]
    fig = Figure(figsize=(width / 120, height / 120), dpi=120)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image)
    ax.set_axis_off()
    return fig


def _show_figures_inline() -> None:
    """In IPython, show a bare matplotlib Figure as an image, as pyplot's inline backend does
    once pyplot is imported (our figures are built without pyplot: report/plots.py)."""
    import sys

    if "IPython" not in sys.modules:
        return
    from IPython import get_ipython
    from IPython.core.pylabtools import select_figure_formats

    shell = get_ipython()
    if shell is not None:
        select_figure_formats(shell, {"png"})
