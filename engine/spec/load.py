"""Reading an experiment spec: TOML -> JSON Schema validation -> frozen dataclasses.

The schema (`schema/experiment.schema.json`, additionalProperties false everywhere) is the one authority on which
keys exist, their types and ranges; errors are rewritten to name the key path (`train.epochs: 'abc' is not of
type 'integer'`, `unknown key 'train.epoch'`). Command-line overrides (`--set train.epochs=50`) are merged into
the same document before validation, so they are checked exactly like the file.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from functools import lru_cache
from pathlib import Path

import jsonschema

from voxelbase.errors import VoxelbaseError
from voxelbase.resources import schema_dir

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from voxelbase.spec.model import SECTIONS, ExperimentSpec

SCHEMA_FILE = "experiment.schema.json"


class SpecError(VoxelbaseError, ValueError):
    """An invalid spec; `errors` lists one message per problem, each naming its key path."""

    def __init__(self, errors: Sequence[str], *, source: str | None = None) -> None:
        self.errors = tuple(errors)
        self.source = source
        head = f"invalid experiment spec {source}:\n  " if source else ""
        super().__init__(head + "\n  ".join(self.errors) if source else "\n".join(self.errors))


def _schema_path() -> Path:
    return schema_dir() / SCHEMA_FILE


@lru_cache(maxsize=1)
def experiment_schema() -> dict:
    """The JSON Schema every spec is validated against."""
    path = _schema_path()
    if not path.is_file():
        raise FileNotFoundError(f"experiment schema missing at {path}; reinstall voxelbase from its source tree")
    return json.loads(path.read_text())


def _key_path(parts: Iterable[object]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _schema_at(parts: Sequence[str]) -> dict | None:
    node: dict | None = experiment_schema()
    for p in parts:
        node = (node or {}).get("properties", {}).get(p)
        if node is None:
            return None
    return node


def _format_error(error: jsonschema.ValidationError, overridden: set[str]) -> list[str]:
    path = list(error.absolute_path)
    where = _key_path(path)
    if error.validator == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        out = []
        for key in sorted(set(error.instance) - set(known)):
            full = _key_path([*path, key])
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{_key_path([*path, close[0]])}'?)" if close else ""
            out.append(f"unknown key '{full}'{hint}")
        return out
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return [f"missing required key '{_key_path([*path, k])}'" for k in missing]
    message = f"{where or '<spec>'}: {error.message}"
    if error.validator in ("anyOf", "oneOf") and "description" in error.schema:
        message = f"{where or '<spec>'}: {error.instance!r} is not valid ({error.schema['description']})"
    elif error.validator == "pattern" and "description" in error.schema:
        message += f" ({error.schema['description']})"
    if any(where == k or where.startswith(k + ".") or where.startswith(k + "[") for k in overridden):
        message += " (from --set)"
    return [message]


def parse_override(text: str) -> tuple[str, object]:
    """`key.path=value` -> (key path, value). The value is read as JSON, else a TOML literal, else a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.strip() for part in key.split(".")):
        raise SpecError([f"override {text!r} is not of the form key.path=value (e.g. train.epochs=50)"])
    raw = raw.strip()
    try:
        value = json.loads(raw)
    except ValueError:
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
    node = _schema_at(key.split("."))
    types = node.get("type") if node else None
    is_array = types == "array" or (isinstance(types, list) and "array" in types)
    if is_array and value is not None and not isinstance(value, list):
        value = [value]  # --set train.folds=0 means [0]
    return key, value


def apply_overrides(data: Mapping, overrides: Iterable[str]) -> tuple[dict, set[str]]:
    """A deep copy of `data` with the overrides set; also returns the overridden key paths."""
    merged = json.loads(json.dumps(data, default=str))
    keys = set()
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        node = merged
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError([f"--set {key}: '{'.'.join(parts[: i + 1])}' is a value, not a table"])
            node = child
        node[parts[-1]] = value
        keys.add(key)
    return merged, keys


def _coerce(value: object, schema: dict | None) -> object:
    """JSON values -> dataclass values: arrays become tuples, integers in number fields become floats."""
    if value is None or schema is None:
        return value
    if isinstance(value, list):
        return tuple(_coerce(v, schema.get("items")) for v in value)
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    if "number" in types and "integer" not in types and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _build(cls: type, data: Mapping, props: Mapping, section: str) -> object:
    kwargs = {f.name: _coerce(data[f.name], props.get(f.name)) for f in fields(cls) if f.name in data}
    try:
        return cls(**kwargs)
    except ValueError as exc:  # cross-field checks the schema cannot express (e.g. a range's low > high)
        raise SpecError([f"{section}.{exc}"]) from None


def spec_from_dict(
    data: Mapping, *, overrides: Iterable[str] = (), spec_dir: str | Path | None = None, source: str | None = None
) -> ExperimentSpec:
    """Validate a spec document (as parsed from TOML or stored JSON) and build the `ExperimentSpec`."""
    merged, overridden = apply_overrides(data, overrides)
    validator = jsonschema.Draft202012Validator(experiment_schema())
    errors = sorted(validator.iter_errors(merged), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    messages = [m for e in errors for m in _format_error(e, overridden)]
    if messages:
        raise SpecError(messages, source=source)
    props = experiment_schema()["properties"]
    sections = {}
    try:
        for name, cls in SECTIONS.items():
            if name in merged:
                sections[name] = _build(cls, merged[name], props[name]["properties"], name)
            elif name not in ("ingest", "compute"):  # optional sections: absent stays None
                sections[name] = cls()
    except SpecError as exc:
        raise SpecError(exc.errors, source=source) from None
    return ExperimentSpec(
        name=merged["name"],
        dataset=merged["dataset"],
        description=merged.get("description", ""),
        spec_dir=str(spec_dir) if spec_dir is not None else None,
        **sections,
    )


def parse_spec(text: str, *, overrides: Iterable[str] = (), source: str | None = None) -> ExperimentSpec:
    """Parse TOML text into an `ExperimentSpec`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([f"not valid TOML: {exc}"], source=source) from None
    return spec_from_dict(data, overrides=overrides, source=source)


def load_spec(path: str | Path, *, overrides: Iterable[str] = ()) -> ExperimentSpec:
    """Read and validate a TOML spec file; `overrides` are `key.path=value` strings (`--set`)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"spec file not found: {path}"])
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError([f"not valid TOML: {exc}"], source=str(path)) from None
    return spec_from_dict(data, overrides=overrides, spec_dir=path.resolve().parent, source=str(path))
