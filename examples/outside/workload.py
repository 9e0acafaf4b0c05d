"""A regression workload written as a user would: LayerNorm, dropout, a buffer, DataLoaders and
a ``loss(model, batch)`` objective instead of ``loss_fn``."""

import torch

import stabsweep


class Net(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(20, width)
        self.norm = torch.nn.LayerNorm(width)
        self.drop = torch.nn.Dropout(0.1)
        self.out = torch.nn.Linear(width, 1)
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.drop(torch.nn.functional.gelu(self.norm(self.inp(x))))
        return self.out(hidden).squeeze(-1) * self.scale


def mse(model: torch.nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def build(seed: int, batch_size: int = 32, width: int = 64) -> stabsweep.Workload:
    torch.manual_seed(seed)
    model = Net(width)
    data = torch.Generator().manual_seed(1234)
    x = torch.randn(1024, 20, generator=data)
    y = x[:, :3].sum(1) + 0.1 * torch.randn(1024, generator=data)
    train = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x[:900], y[:900]),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        drop_last=True,
    )
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[900:], y[900:]), batch_size=128)
    return stabsweep.Workload(model=model, train_data=train, eval_data=val, loss=mse)
