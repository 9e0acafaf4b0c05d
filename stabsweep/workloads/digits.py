"""The 8×8 handwritten digits that scikit-learn ships: real data, no download.

The split is made once and cached as a small tensor file under the user's cache folder
(``$STABSWEEP_CACHE``, else ``$XDG_CACHE_HOME/stabsweep``, else ``~/.cache/stabsweep``), keyed by
scikit-learn's version: importing scikit-learn takes a second or two, paid otherwise by every
process that builds the workload (each worker of the process executor, each Ray task). A cache
that cannot be read or written is skipped, never an error.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

NUM_CLASSES = 10
VALIDATION_FRACTION = 0.2
SPLIT_SEED = 0  # the split is fixed; a trial's seed changes weights and batch order only


@lru_cache(maxsize=1)
def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_val, y_val): pixels scaled to [0, 1], a stratified 80/20 split."""
    import torch

    path = _cache_path()
    if path is not None and path.is_file():
        try:
            return tuple(torch.load(path, weights_only=True))
        except Exception:  # noqa: BLE001 - a torn or foreign cache file: make the split again
            pass
    split = _split()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(list(split), partial)
            os.replace(partial, path)
        except OSError:
            pass
    return split


def _split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=VALIDATION_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return x_train, y_train, x_val, y_val


def _cache_path() -> Path | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        key = f"digits-sklearn{version('scikit-learn')}-split{SPLIT_SEED}-{VALIDATION_FRACTION}.pt"
    except PackageNotFoundError:
        return None
    root = os.environ.get("STABSWEEP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "stabsweep"
    )
    return Path(root) / key
