"""Finding and calling workload factories: built-ins, ``file.py:fn`` and ``module:fn``.

A factory is called once per trial with the trial's seed, so every trial of a sweep starts
from the same weights and sees the same batches. Everything that can be wrong about a
factory before training starts (missing file, missing function, unknown argument, wrong
return type) is a :class:`UserError` naming the config key.

How a factory is imported is one rule, the same in every process that runs trials (this one,
a worker process, a Ray task), owned by :func:`import_module_of`:

- ``file.py:fn``: as ``python file.py`` would run it, with the file's folder first on the
  import path, so ``from model import GPT`` finds ``model.py`` beside it;
- ``package.module:fn``: as ``python -m`` would, from the folder stabsweep was started in
  (recorded when the config is read, so a worker started elsewhere resolves it the same way).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stabsweep.errors import UserError, did_you_mean, user_code
from stabsweep.workloads.base import Workload

# name -> "module:function"; imported only when a trial needs it, so the CLI starts fast.
BUILTIN_WORKLOADS: dict[str, str] = {
    "mlp": "stabsweep.workloads.mlp:build",
    "cnn": "stabsweep.workloads.cnn:build",
    "transformer": "stabsweep.workloads.transformer:build",
}


@dataclass
class WorkloadFactory:
    """A resolved factory and the arguments every call gets; picklable for worker processes."""

    target: str  # "module:function" or "/abs/path/file.py:function"
    args: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    key: str = "workload.factory"  # the config key named in errors
    start_folder: str | None = None  # where a module path resolves from: the cwd when the config was read
    eval_batches: int | None = None  # evaluate on the first this many eval batches only (the range test)
    fn: Callable[..., Any] | None = None  # a callable given to the Python API that no import path reaches

    def function(self) -> Callable[..., Any]:
        if self.fn is not None:
            return self.fn
        return _load(self.target, self.key, self.start_folder)

    def __call__(self, seed: int) -> Workload:
        with user_code():  # what the factory raises, or a factory that returns the wrong thing, is the user's
            return self._build(seed)

    def _build(self, seed: int) -> Workload:
        fn = self.function()
        kwargs = dict(self.args)
        if self.batch_size is not None and _accepts(fn, "batch_size"):
            kwargs["batch_size"] = self.batch_size
        workload = fn(seed=seed, **kwargs)
        if not isinstance(workload, Workload):
            raise UserError(
                f"{self.key}: {self.target} returned {type(workload).__name__}, "
                "expected stabsweep.Workload(model=..., train_data=..., loss_fn=...)"
            )
        if self.eval_batches is not None and workload.eval_data is not None:
            workload.eval_data = FirstBatches(workload.eval_data, self.eval_batches)
        return workload

    def check(self, seed: int) -> Workload:
        """Fail early, before any trial, for a factory that cannot be loaded, called or used."""
        fn = self.function()
        params = inspect.signature(fn).parameters
        if "seed" not in params and not _has_var_keyword(fn):
            raise UserError(f"{self.key}: {self.target} must accept a 'seed' argument")
        if not _has_var_keyword(fn):
            accepted = [p for p in params if p not in ("seed", "batch_size")]
            for name in self.args:
                if name not in params:
                    raise UserError(
                        f"workload.args.{name}: {self.target} has no argument "
                        f"'{name}'{did_you_mean(name, accepted)}; it takes {', '.join(accepted)}"
                    )
        try:
            return self(seed)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - the factory raised: bad args or a bug in it
            raise UserError(
                f"{self.key}: calling {self.target.rsplit('/', 1)[-1]}(seed={seed}) raised {type(exc).__name__}: {exc}"
            ) from None


class FirstBatches:
    """The first ``count`` batches of ``data``, each time it is iterated."""

    def __init__(self, data: Any, count: int) -> None:
        self.data, self.count = data, count
        if callable(getattr(data, "to", None)):  # in-memory data moves to the device once, as unwrapped
            self.to = data.to

    def __iter__(self) -> Any:
        import itertools

        return itertools.islice(iter(self.data), self.count)


def resolve_factory(
    workload: Any, config_source: str | None = None, fn: Callable[..., Any] | None = None
) -> WorkloadFactory:
    """The factory a ``WorkloadConfig`` names; relative file paths resolve against the config's
    folder. ``fn``: the callable the Python API was given, when no import path reaches it (one
    defined in a notebook or script); ``workload.factory`` then only names it."""
    if fn is not None:
        return WorkloadFactory(workload.factory, dict(workload.args), workload.batch_size, key="factory", fn=fn)
    if workload.name is not None:
        return WorkloadFactory(
            BUILTIN_WORKLOADS[workload.name], dict(workload.args), workload.batch_size, key="workload.name"
        )
    target, _, fn_name = workload.factory.rpartition(":")
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        candidates = (
            [path]
            if path.is_absolute()
            else [Path(config_source).parent / path if config_source else path, Path.cwd() / path]
        )
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            tried = " or ".join(str(c) for c in dict.fromkeys(candidates))
            raise UserError(f"workload.factory: file not found: {tried}")
        target = str(found.resolve())
        return WorkloadFactory(f"{target}:{fn_name}", dict(workload.args), workload.batch_size)
    return WorkloadFactory(workload.factory, dict(workload.args), workload.batch_size, start_folder=str(Path.cwd()))


def name_of_callable(fn: Callable[..., Any]) -> tuple[str, bool]:
    """``("module:qualname", importable)`` for a factory given as a callable. ``importable``: a
    worker process can import it by that name (a module-level function of a module other than
    ``__main__``, found under its name); otherwise it exists only in this process."""
    module = getattr(fn, "__module__", None) or "__main__"
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    name = f"{module}:{qualname}"
    if module == "__main__" or "<" in qualname or "." in qualname:
        return name, False
    found = getattr(sys.modules.get(module), qualname, None)
    return name, found is fn


def factory_seen_from(workload: Any, config_source: str | None, folder: Path) -> str | None:
    """A file factory (``file.py:fn``) written as a path relative to ``folder``, for a config
    saved there (a run's ``config.yaml``, tune's ``recommended.yaml``) to keep naming the same
    file from any working directory; None for a built-in, a module path or a missing file."""
    if not workload.factory:
        return None
    try:
        path, _, function = resolve_factory(workload, config_source).target.rpartition(":")
    except UserError:
        return None
    if not path.endswith(".py"):
        return None
    return f"{os.path.relpath(path, Path(folder).resolve())}:{function}"


def import_module_of(target: str, start_folder: str | None = None) -> Any:
    """The module a factory target names, imported by the one rule of this module's docstring."""
    module_name = target.rpartition(":")[0]
    if module_name.endswith(".py"):
        path = Path(module_name)
        _first_on_path(str(path.parent))
        return _import_file(path)
    if start_folder is not None:  # None: a built-in, importable as it is
        _first_on_path(start_folder)
    return importlib.import_module(module_name)


def _first_on_path(folder: str) -> None:
    """Put ``folder`` first on the import path for this process (a factory may import lazily)."""
    if sys.path[:1] != [folder]:
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)


def _load(target: str, key: str, start_folder: str | None) -> Callable[..., Any]:
    module_name, _, fn_name = target.rpartition(":")
    try:
        module = import_module_of(target, start_folder)
    except UserError:
        raise
    except ModuleNotFoundError as exc:
        raise UserError(f"{key}: cannot import '{module_name}': {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module raised while importing
        raise UserError(f"{key}: importing {module_name} raised {type(exc).__name__}: {exc}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        names = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise UserError(f"{key}: {module_name} has no function '{fn_name}'{did_you_mean(fn_name, names)}")
    return fn


def _import_file(path: Path) -> Any:
    name = f"stabsweep_user_{abs(hash(str(path)))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"workload.factory: {path} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(fn).parameters or _has_var_keyword(fn)


def _has_var_keyword(fn: Callable[..., Any]) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
