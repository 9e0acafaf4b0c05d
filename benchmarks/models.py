"""``make bench``'s rows on real models (``tests/real_models.py``): a ResNet and a WideResNet
with BatchNorm, and a HuggingFace GPT-2 (when the ``models`` extra is installed).

For each, an 8-rate sweep (the rates spread over two decades below where training breaks, so
every trial trains all its steps) is timed vectorized, sequential, as one trial, and as a plain
PyTorch loop, all interleaved in each round:

(model seq)   8-rate sweep, sequential engine / vectorized          target ≥ 3 (ResNet), ≥ 4 (GPT-2)
(model b)     8-rate sweep, vectorized / one trial
(model a)     one trial / a plain PyTorch loop
(model mem)   peak memory of the 8-rate batch / of one trial: what a user must plan for

Memory is each side's own process's peak resident set above the same process before it
trained (Linux ``VmHWM``), on a GPU ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name: (factory, optimizer, rates, steps)
    "resnet": ("resnet", "momentum", [1e-3 * 1.6**k for k in range(8)], 60),
    "wide_resnet": ("wide_resnet", "momentum", [1e-3 * 1.6**k for k in range(8)], 40),
    "gpt2": ("gpt2", "adam", [1e-4 * 1.6**k for k in range(8)], 60),
}
TARGET = {"resnet": 3.0, "wide_resnet": 3.0, "gpt2": 4.0}  # sequential / vectorized, at least
AT_LEAST = {f"{name} seq" for name in MODELS}  # rows whose target is a floor, not a ceiling


def _factory(name: str):
    sys.path.insert(0, str(ROOT))
    from tests import real_models

    return getattr(real_models, MODELS[name][0])


def available(name: str) -> bool:
    if name != "gpt2":
        return True
    import importlib.util

    return importlib.util.find_spec("transformers") is not None


def _specs(name: str, steps: int | None = None):
    from stabsweep.config.schema import ScheduleConfig
    from stabsweep.records import TrialSpec

    _, _, rates, default = MODELS[name]
    steps = steps or default
    return [TrialSpec(i, lr, 0, steps, steps, ScheduleConfig()) for i, lr in enumerate(rates)]


def _job(name: str, device: str, engine: str = "auto"):
    from stabsweep.config.schema import DetectConfig, OptimizerConfig
    from stabsweep.records import TrialJob

    return TrialJob(_factory(name), OptimizerConfig(name=MODELS[name][1]), DetectConfig(), device, engine=engine)


def sweep(name: str, device: str, engine: str, steps: int | None = None) -> float:
    from stabsweep.engine.runner import run_trials

    start = time.perf_counter()
    results = list(run_trials(_specs(name, steps), _job(name, device, engine)))
    assert all(r.steps_run == r.spec.steps for r in results), [r.reason for r in results]
    assert engine == "sequential" or all(r.engine == "vectorized" for r in results)
    return time.perf_counter() - start


def one_trial(name: str, device: str, steps: int | None = None) -> float:
    from stabsweep.engine.runner import run_trials

    specs = _specs(name, steps)
    start = time.perf_counter()
    list(run_trials(specs[len(specs) // 2 : len(specs) // 2 + 1], _job(name, device, "sequential")))
    return time.perf_counter() - start


def plain_loop(name: str, device: str, steps: int | None = None) -> float:
    """The middle trial as a user writes it: torch.optim on the model, the workload's loss."""
    from stabsweep.training.common import to_device, training_loss

    specs = _specs(name, steps)
    spec = specs[len(specs) // 2]
    start = time.perf_counter()
    workload = _factory(name)(0)
    model = workload.model.to(device)
    make = torch.optim.Adam if MODELS[name][1] == "adam" else torch.optim.SGD
    kwargs = {} if MODELS[name][1] == "adam" else {"momentum": 0.9}
    optimizer = make(model.parameters(), lr=spec.lr, **kwargs)
    done = 0
    while done < spec.steps:
        for batch in workload.train_data:
            loss = training_loss(workload, model, to_device(batch, torch.device(device)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()  # read, as the trial reads it
            done += 1
            if done == spec.steps:
                break
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_memory(name: str, device: str, what: str, steps: int | None = None) -> float:
    """Bytes above the process's own at its start that ``what`` (one | batch) peaks at, in a
    fresh process so that one side's allocations do not hide the other's."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks import models;"
        f"print(json.dumps(models._measure({name!r}, {device!r}, {what!r}, {steps!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def _high_water() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) * 1024
    return float("nan")


def _measure(name: str, device: str, what: str, steps: int | None) -> float:
    from stabsweep.engine.runner import run_trials

    specs = _specs(name, steps)
    _factory(name)(0)  # imports and data in place before the baseline
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    before = _high_water()
    chosen = specs if what == "batch" else specs[len(specs) // 2 : len(specs) // 2 + 1]
    list(run_trials(chosen, _job(name, device, "auto")))
    if device.startswith("cuda"):
        return float(torch.cuda.max_memory_allocated())
    return _high_water() - before


def rows(runs: int, device: str, console, steps: int | None = None) -> list[tuple]:
    """The model rows of the bench table (see the module docstring); ``steps`` shortens every
    model's trials (the bench's own test)."""
    from benchmarks.bench import ratio_row, timed_rounds

    out = []
    for name in MODELS:
        if not available(name):
            console.print(f"({name}: the models extra is not installed; its rows are left out)")
            continue
        sweep(name, device, "auto", steps)  # warm up
        vec, seq, one, plain = timed_rounds(
            runs,
            lambda n=name: sweep(n, device, "auto", steps),
            lambda n=name: sweep(n, device, "sequential", steps),
            lambda n=name: one_trial(n, device, steps),
            lambda n=name: plain_loop(n, device, steps),
        )
        out.append(ratio_row(f"{name} seq", f"{name}: 8-rate sweep, sequential / vectorized", seq, vec, TARGET[name]))
        out.append(ratio_row(f"{name} b", f"{name}: 8-rate sweep, vectorized / one trial", vec, one))
        out.append(ratio_row(f"{name} a", f"{name}: one trial / plain PyTorch loop", one, plain))
        batch_mb = peak_memory(name, device, "batch", steps) / 2**20
        one_mb = peak_memory(name, device, "one", steps) / 2**20
        name_mem = f"{name}: peak memory above the process's own, 8-rate batch / one trial (MB)"
        out.append((f"{name} mem", name_mem, batch_mb / max(one_mb, 1e-9), None, batch_mb, one_mb))
    return out
