"""The quickstart from Python, as a notebook runs it (each block a cell): python examples/notebook.py

The model is defined here, beside the call, as it would be in a notebook: no factory file,
no YAML of its own (the quickstart's config gives the steps, the optimizer and the grid, and
its ``workload.args`` are this factory's arguments).
"""

import torch
from sklearn.datasets import load_digits
from torch import nn

import stabsweep


def build(seed, batch_size=64, hidden=128, depth=3):
    """An MLP on scikit-learn's 8x8 digits: 1,500 images to train on, the rest to evaluate."""
    torch.manual_seed(seed)
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16, dtype=torch.float32), torch.tensor(y)
    layers, width = [], 64
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return stabsweep.Workload(
        model=nn.Sequential(*layers, nn.Linear(width, 10)),
        train_data=stabsweep.TensorBatches(x[:1500], y[:1500], batch_size, seed=seed),
        eval_data=stabsweep.TensorBatches(x[1500:], y[1500:], 512, shuffle=False, drop_last=False),
        loss_fn=nn.CrossEntropyLoss(),
    )


# %% the whole procedure: lr, warmup, clipping, the confirm sweeps
result = stabsweep.tune("configs/quickstart.yaml", factory=build, out="runs/notebook", force=True, quiet=True)
print(result.verdict)
print(result.chosen, result.best_lr, result.recommended_config)

# %% the figures (inline in Jupyter) and the tables (DataFrames)
frontier = result.plot()  # the stability frontier with and without each fix
lr = result.stages["lr"]
print(lr.rates[["lr", "ok", "diverged", "objective_mean"]])
curves = lr.plot("loss_curves")

# %% the README's pictures of this script
frontier.savefig("docs/images/notebook_frontier.png", dpi=120)
