"""Reading a config: YAML, ``--set`` overrides, validation, and one clear error message.

Every way a config can be wrong ends here as a :class:`~stabsweep.errors.UserError` that
names the file (or the ``--set`` option), the key path and what was expected.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from stabsweep.config.schema import Config
from stabsweep.errors import ConfigKeyError, UserError, did_you_mean, short_repr


class Overrides(dict):
    """Config keys set on the command line (key path -> value), and the option that set each,
    so an error names ``--set train.steps`` or ``--device``, not the file."""

    def __init__(self) -> None:
        super().__init__()
        self.origins: dict[str, str] = {}

    def origin(self, key: str) -> str:
        return self.origins.get(key, f"--set {key}")


def parse_overrides(items: list[str] | None, flags: dict[str, tuple[str, Any]] | None = None) -> Overrides:
    """``["train.steps=200", "train.clip=null"]`` → ``{"train.steps": 200, ...}`` (YAML values);
    ``flags`` (key -> (option, value)) are options such as ``--device`` that set a key."""
    overrides = Overrides()
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not re.fullmatch(r"\s*[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\s*", key):
            raise UserError(f"--set {item}: expected key.sub=value, e.g. --set train.steps=200")
        try:
            overrides[key.strip()] = yaml.load(raw, Loader=_UniqueKeyLoader) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise UserError(f"--set {item}: the value is not valid YAML ({exc.problem})") from None
    for key, (option, value) in (flags or {}).items():
        overrides[key] = value
        overrides.origins[key] = option
    return overrides


# YAML 1.2's float (the core schema's), added to the loader's resolvers for the characters a number starts with.
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$")


def _apply_override(data: dict[str, Any], key: str, value: Any, origin: str) -> None:
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise UserError(f"{origin}: '{where}' is {child!r}, not a mapping; set '{where}' itself")
        node = child
    node[parts[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key written twice in one mapping is an error: the second
    would silently win, and the user would sweep something other than what they read. And
    ``1e-4`` is a number, as in YAML 1.2 and Python: PyYAML follows YAML 1.1, where a float
    needs a dot (``1.0e-4``), and reads ``1e-4`` as the string "1e-4"."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {short_repr(key)} is written twice (lines {seen[key]} and {line})",
                    key_node.start_mark,
                )
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def read_yaml(path: Path) -> Any:
    """The YAML document at ``path``; any problem with the file is a UserError naming it."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not a UTF-8 text file (byte {exc.start} is not valid UTF-8); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{path}{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise UserError(f"{path}: the YAML nests too deeply to be a config") from None


def load_config(
    path: str | Path, overrides: dict[str, Any] | Overrides | None = None, *, saved: bool = False
) -> Config:
    """Read, override and validate a config file; raise UserError on any problem. ``saved``: a
    config a finished run wrote, judged when it ran: checked without building torch objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys (name, workload, train, ...) at the top")
    return config_from(data, str(path), overrides, saved=saved)


def config_from(
    data: dict[str, Any], source: str, overrides: dict[str, Any] | Overrides | None = None, *, saved: bool = False
) -> Config:
    """Override and validate a config read already (a file's YAML, or a mapping given to the
    Python API); ``source`` names it in every error. Raises UserError on any problem."""
    if not isinstance(overrides, Overrides):
        overrides = _as_overrides(overrides or {})
    for key, value in overrides.items():
        _apply_override(data, key, value, overrides.origin(key))
    return validate_config(data, source=source, overrides=overrides, saved=saved)


def _as_overrides(values: dict[str, Any]) -> Overrides:
    overrides = Overrides()
    overrides.update(values)
    return overrides


def validate_config(
    data: dict[str, Any], source: str, overrides: Overrides | None = None, saved: bool = False
) -> Config:
    try:
        config = Config.model_validate(data, context={"build_torch": not saved})
    except ValidationError as exc:
        raise UserError(_explain(exc, source, overrides or Overrides())) from None
    except UserError as exc:  # raised by a nested check with its own wording
        raise UserError(f"{source}: {exc.message}") from None
    config._source = source
    return config


def dump_config(config: Config, folder: Path | None = None) -> str:
    """The resolved config as YAML: valid input for ``load_config`` (it round-trips). Saved in
    ``folder``, a file factory's path is rewritten relative to it, so the saved file names the
    same factory whatever the working directory of the command that reads it."""
    from stabsweep.workloads.factory import factory_seen_from

    header = f"# resolved config of {config.source}; rerun with: stabsweep lr THIS_FILE\n"
    data = config.model_dump(mode="json")
    moved = factory_seen_from(config.workload, config.source, folder) if folder is not None else None
    if moved:
        data["workload"]["factory"] = moved
    return header + yaml.safe_dump(data, sort_keys=False)


def _explain(exc: ValidationError, source: str, overrides: Overrides) -> str:
    errors = exc.errors()
    first = errors[0]
    raw = first["loc"]
    if first["type"] == "extra_forbidden":  # the last part is the key the user wrote, whatever it looks like
        loc = (*(p for p in raw[:-1] if not _is_union_tag(p)), raw[-1])
    else:
        loc = tuple(p for p in raw if not _is_union_tag(p))
    below = (first.get("ctx") or {}).get("error")
    if isinstance(below, ConfigKeyError):  # a list entry or an argument named by the check itself
        loc = (*loc, below.key)
    key = _format_loc(loc)
    set_by = next(  # the override at, above or below the key in error
        (k for k in overrides if key == k or key.startswith((k + ".", k + "[")) or k.startswith(key + ".")), None
    )
    origin = overrides.origin(set_by) if set_by is not None else source
    if first["type"] == "extra_forbidden":
        known = _fields_at(loc[:-1])
        message = f"unknown key{did_you_mean(str(loc[-1]), known)}"
        if known:
            message += f"; expected one of: {', '.join(known)}"
    elif first["type"] == "missing":
        message = "required key is missing"
    else:
        message = re.sub(r"a valid dictionary or instance of \w+", "a mapping of keys", first["msg"])
        message = message.removeprefix("Value error, ")
        if "input" in first and first["type"] not in ("value_error", "assertion_error"):
            message += f" (got {short_repr(first['input'])})"
    more = f" (and {len(errors) - 1} more problem{'s' * (len(errors) > 2)})" if len(errors) > 1 else ""
    where = "" if set_by == key else f"{key or '<top>'}: "
    return f"{origin}: {where}{message}{more}"


def _is_union_tag(part: Any) -> bool:
    """pydantic puts the union member's name in the loc (e.g. 'ClipConfig'); users never wrote it."""
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or part.startswith("function-"))


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith("["):
            out += str(part)
        else:
            out += f".{part}" if out else str(part)
    return out


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys a user may write at ``loc``, for did-you-mean hints."""
    model: type[BaseModel] | None = Config
    for part in loc:
        if model is None or isinstance(part, int):
            return []
        field = model.model_fields.get(str(part))
        model = _model_in(field.annotation) if field else None
    return list(model.model_fields) if model else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found:
            return found
    return None
