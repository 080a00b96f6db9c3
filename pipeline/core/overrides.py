"""Workspace files merged over built-in defaults: `profiles/<name>.yaml` over `pipeline/data/<name>.yaml`,
key by key, validated against the model that reads them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline.core import yamlio
from pipeline.core.errors import InvalidInput, ValidationErrors

PROFILES_DIR = "profiles"




def builtin_path(name: str) -> Path:
    return Path(str(resources.files("pipeline") / "data" / name))


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge recursively; any other value (lists included) replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def changed_keys(base: Mapping[str, Any], override: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Dotted key paths whose value the override actually changes (a workspace file that
    restates a built-in default does not make that default an "override")."""
    keys: set[str] = set()
    for key, value in override.items():
        path = f"{prefix}{key}"
        old = base.get(key) if isinstance(base, Mapping) else None
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            inner = changed_keys(old, value, path + ".")
            keys |= inner | ({path} if inner else set())
        elif value != old:
            keys.add(path)
    return keys


def _load_override(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = yamlio.load_fast(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: expected a mapping at the top level", "see the built-in file for the shape")
    return data


@functools.cache
def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema, generated once per process (pydantic takes ~5 ms a model)."""
    return model.model_json_schema()


def _validated(model: type[BaseModel], data: dict[str, Any], source: Path | str, *, builtin: bool = False) -> Any:
    """`data` as `model`; every schema problem at once, located in `source`.

    `builtin`: the data is the package's own file, unmerged (no workspace file): it is
    checked by the test suite, so only pydantic reads it, without generating the model's
    JSON Schema and importing jsonschema (~40 ms of every command that reads the ruleset).
    """
    if builtin:
        return model.model_validate(data)
    from pipeline.core.schemas import validate_instance

    problems = validate_instance(data, _json_schema(model), source=str(source), positions=None)
    if problems:
        raise ValidationErrors(problems, f"correct {source}; `doit validate` rechecks")
    return model.model_validate(data)
