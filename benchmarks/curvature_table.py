"""``make curvature-table``: the README's table "How far off the prediction is".

For each workload: an lr sweep that logs every trial's sharpness, then ``stabsweep curvature``
in the same folder; one markdown row each, with λ₀, the edge it predicts (threshold / λ₀), the
sweep's first failing rate and how it failed, its first divergence, how far training sharpened
and the edge at that sharpness. Nothing here is tuned: each row is what the two commands
print (docs/contract.md, "Curvature").

The plain-SGD rows (the setting where 2/η is exact on a quadratic) share one recipe, the deep
MLP's in ``configs/deep_mlp_sgd.yaml``: 1,000 steps of batch 64 on digits, 17 rates from 0.01
to 100, sharpness every 50 steps. About 13 minutes on 2 CPU cores, most of it the two CNNs
and the Transformer; ``--only NAME ...`` runs some, ``--steps N`` trains N steps instead (a
quick check). Folders: ``runs/curvature-table/<name>``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PLAIN_SGD = {
    "seed": 0,
    "device": "auto",
    "train": {
        "steps": 1000,
        "eval_every": 100,
        "optimizer": {"name": "sgd"},
        "schedule": {"name": "constant"},
        "log_sharpness_every": 50,
    },
    "lr_sweep": {"lrs": {"min": 0.01, "max": 100, "num": 17}},
}


def _plain_sgd(name: str, workload: str, **args: Any) -> dict[str, Any]:
    config = copy.deepcopy(PLAIN_SGD)
    config.update(name=name, workload={"name": workload, "args": args, "batch_size": 64})
    return config


def _yaml(path: str, **train: Any) -> dict[str, Any]:
    config = yaml.safe_load((ROOT / path).read_text())
    config["train"].update(train)
    return config


WORKLOADS = {  # name: (what the row says, its config)
    "mlp1": ("MLP 1 × 256, ReLU", _plain_sgd("mlp1", "mlp", hidden=256, depth=1)),
    "mlp3": ("MLP 3 × 128, ReLU (the quickstart's)", _plain_sgd("mlp3", "mlp", hidden=128, depth=3)),
    "mlp3_tanh": ("MLP 3 × 128, tanh", _plain_sgd("mlp3_tanh", "mlp", hidden=128, depth=3, activation="tanh")),
    "deep_mlp": ("deep MLP 6 × 64, ReLU (`configs/deep_mlp_sgd.yaml`)", _yaml("configs/deep_mlp_sgd.yaml")),
    "cnn": ("residual CNN, no normalization", _plain_sgd("cnn", "cnn", norm="none")),
    "cnn_bn": ("residual CNN, BatchNorm", _plain_sgd("cnn_bn", "cnn", norm="batch")),
    "quickstart": (
        "quickstart MLP (`configs/quickstart.yaml`)",
        _yaml("configs/quickstart.yaml", log_sharpness_every=25),
    ),
    "transformer": (
        "post-norm Transformer (`configs/transformer_postnorm.yaml`)",
        _yaml("configs/transformer_postnorm.yaml", log_sharpness_every=25),
    ),
}
HEADER = (
    "| workload | optimizer | λ₀ (residual) | predicted edge | sweep's first failing rate | ÷ predicted "
    "| first divergence | ÷ predicted | sharpened (× λ₀) | edge at that sharpness | sweep ÷ it |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def row(what: str, found: dict[str, Any]) -> str:
    """One markdown row from a curvature summary.json."""

    def num(value: Any, spec: str = ".3g") -> str:
        return "–" if value is None else format(value, spec)

    unstable, status = found["unstable_base_lr"], found["unstable_status"]
    trained = found["trained_edge"]
    return (
        f"| {what} | {found['optimizer']} | {num(found['sharpness'], '.4g')} ({num(found['residual'], '.0e')}) "
        f"| {num(found['predicted_edge'])} | {num(unstable)} ({(status or '–').replace('_', ' ')}) "
        f"| {num(found['edge_ratio'], '.2g')} | {num(found['diverged_lr'])} | {num(found['diverged_ratio'], '.2g')} "
        f"| {num(found['sharpening'], '.3g')} | {num(trained)} "
        f"| {num(unstable / trained if unstable and trained else None, '.2g')} |"
    )


def main() -> None:
    import stabsweep

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "curvature-table")
    parser.add_argument("--steps", type=int, help="train this many steps instead (a quick check, not the table)")
    args = parser.parse_args()
    rows = []
    for name in args.only:
        what, config = WORKLOADS[name]
        if args.steps:
            config = copy.deepcopy(config)
            every = max(1, args.steps // 4)
            config["train"].update(steps=args.steps, eval_every=every, log_sharpness_every=every)
        folder = args.out / name
        print(f"{name}: lr sweep, then the probe -> {folder}", flush=True)
        stabsweep.lr(config, out=folder, force=True)  # its progress and verdict: minutes per CNN
        found = stabsweep.curvature(config, out=folder, force=True, quiet=True)
        rows.append(row(what, found.summary))
        print(rows[-1], flush=True)
    print("\n" + HEADER + "\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
