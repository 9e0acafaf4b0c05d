"""User workloads by file path and module path, and every way a factory can be wrong."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from stabsweep.config.schema import WorkloadConfig
from stabsweep.errors import UserError
from stabsweep.workloads import Workload, resolve_factory

from .conftest import needs_ray

GOOD = textwrap.dedent(
    """
    import torch
    import stabsweep

    def build(seed, width=8, batch_size=16):
        torch.manual_seed(seed)
        x = torch.randn(64, 4)
        y = (x.sum(1) > 0).long()
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)
        model = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.ReLU(), torch.nn.Linear(width, 2))
        return stabsweep.Workload(model=model, train_data=loader, loss_fn=torch.nn.CrossEntropyLoss())

    def not_a_workload(seed):
        return "model"

    def broken(seed):
        raise RuntimeError("bug in user code")
    """
)


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_workload.py"
    path.write_text(GOOD)
    return path


def test_file_factory_relative_to_config(user_file, tmp_path):
    factory = resolve_factory(
        WorkloadConfig(factory="my_workload.py:build", args={"width": 4}), str(tmp_path / "sweep.yaml")
    )
    factory.check(seed=0)
    workload = factory(seed=0)
    assert isinstance(workload, Workload)
    assert workload.model[0].out_features == 4


def test_module_factory_resolves_from_the_folder_stabsweep_started_in(user_file, tmp_path, monkeypatch):
    monkeypatch.chdir(user_file.parent)
    monkeypatch.setattr(sys, "path", list(sys.path))
    factory = resolve_factory(WorkloadConfig(factory="my_workload:build"))
    assert factory.start_folder == str(user_file.parent)
    monkeypatch.chdir(tmp_path.parent)  # a worker started elsewhere resolves it the same way
    assert isinstance(factory(seed=1), Workload)
    sys.modules.pop("my_workload", None)


MODEL = """
import torch

class Net(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.ReLU(), torch.nn.Linear(width, 2))

    def forward(self, x):
        return self.body(x)
"""

TWO_FILE_FACTORY = """
import torch
import stabsweep
from model import Net  # the file beside this one, as `python factory.py` would find it

def build(seed, batch_size=16, width=8):
    torch.manual_seed(seed)
    x = torch.randn(256, 4, generator=torch.Generator().manual_seed(7))
    y = (x.sum(1) > 0).long()
    data = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    return stabsweep.Workload(model=Net(width), train_data=loader, loss_fn=torch.nn.CrossEntropyLoss())
"""


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "process", pytest.param("ray", marks=needs_ray)])
def test_a_factory_file_imports_the_model_file_beside_it_on_every_executor(executor, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stabsweep.cli import app

    project = tmp_path / "project"
    project.mkdir()
    (project / "model.py").write_text(MODEL)
    (project / "factory.py").write_text(TWO_FILE_FACTORY)
    config = tmp_path / "sweep.yaml"
    config.write_text(
        "name: two-files\nworkload: {factory: 'project/factory.py:build'}\n"
        "train: {steps: 20, eval_every: 10, optimizer: adam}\nlr_sweep: {lrs: [0.001, 0.01]}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", list(sys.path))
    result = CliRunner().invoke(
        app, ["lr", str(config), "--out", str(tmp_path / "out"), "-q", "--json", "--executor", executor]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["statuses"].get("failed", 0) == 0


def test_same_seed_same_weights(user_file):
    factory = resolve_factory(WorkloadConfig(factory=f"{user_file}:build"))
    a, b = factory(seed=3).model[0].weight, factory(seed=3).model[0].weight
    assert (a == b).all()


@pytest.mark.parametrize(
    ("factory", "args", "expected"),
    [
        ("missing.py:build", {}, "file not found"),
        ("{file}:biuld", {}, "did you mean 'build'"),
        ("{file}:not_a_workload", {}, "returned str, expected stabsweep.Workload"),
        ("{file}:build", {"widht": 3}, "workload.args.widht"),
        ("{file}:broken", {}, "raised RuntimeError: bug in user code"),
        ("no_such_module_xyz:build", {}, "cannot import"),
    ],
)
def test_factory_errors_are_user_errors(user_file, tmp_path, factory, args, expected):
    config = WorkloadConfig(factory=factory.format(file=user_file), args=args)
    with pytest.raises(UserError) as info:
        resolve_factory(config, str(tmp_path / "sweep.yaml")).check(seed=0)
    assert expected in info.value.message
    assert info.value.message.startswith("workload.")


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_builtins_build(name):
    workload = resolve_factory(WorkloadConfig(name=name, batch_size=8))(seed=0)
    inputs, targets = next(iter(workload.train_data))
    assert len(inputs) == 8
    loss = (
        workload.loss(workload.model, (inputs, targets))
        if workload.loss
        else workload.loss_fn(workload.model(inputs), targets)
    )
    assert loss.item() == pytest.approx(__import__("math").log(workload.num_classes), rel=0.25)


@pytest.mark.parametrize("options", [{"norm": "pre"}, {"norm": "post"}, {"rezero": True}, {"qk_norm": True}])
def test_transformer_options(options):
    workload = resolve_factory(WorkloadConfig(name="transformer", args=options))(seed=0)
    inputs, _ = next(iter(workload.train_data))
    assert workload.model(inputs).shape[-1] == 32
