"""Loading the workspace's profiles: the ruleset and CI profiles, merged over built-ins.

Built-in defaults ship in the package (pipeline/data); a workspace's profiles/*.yaml are
overrides merged key by key, so a project states only what it changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline import yamlio
from pipeline.errors import InvalidInput, ValidationErrors
from pipeline.jsonio import canonical_json
from pipeline.models.enums import CiProfileName
from pipeline.models.plan import CiProfile
from pipeline.models.ruleset import Ruleset

PROFILES_DIR = "profiles"


@dataclass(frozen=True)
class LoadedRuleset:
    ruleset: Ruleset
    sha256: str
    overridden: frozenset[str]  # dotted key paths the workspace file set
    source: str  # the override file, or "built-in"


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


def _validated(model: type[BaseModel], data: dict[str, Any], source: Path | str) -> Any:
    from pipeline.validate import validate_instance

    problems = validate_instance(data, model.model_json_schema(), source=str(source), positions=None)
    if problems:
        raise ValidationErrors(problems, f"correct {source}; `doit validate` rechecks")
    return model.model_validate(data)


def load_ruleset(workspace: Path) -> LoadedRuleset:
    base = yamlio.load_fast(builtin_path("ruleset.yaml"))
    override_path = workspace / PROFILES_DIR / "ruleset.yaml"
    override = _load_override(override_path)
    merged = deep_merge(base, override)
    ruleset: Ruleset = _validated(Ruleset, merged, override_path if override else "built-in ruleset")
    _check_aliases(ruleset, override_path)
    digest = hashlib.sha256(canonical_json(ruleset.model_dump(mode="json")).encode()).hexdigest()
    return LoadedRuleset(
        ruleset, digest, frozenset(changed_keys(base, override)), str(override_path) if override else "built-in"
    )


def _check_aliases(ruleset: Ruleset, source: Path) -> None:
    bad = sorted(a for a, target in ruleset.aliases.items() if target not in ruleset.categories)
    if bad:
        raise InvalidInput(
            f"{source}: aliases {bad} point at categories that do not exist",
            "make each alias name a key of `categories`",
        )


def load_ci_profiles(
    workspace: Path, plan_ci: Mapping[CiProfileName, CiProfile] | None = None
) -> dict[CiProfileName, CiProfile]:
    """Built-in profiles, then profiles/ci.yaml, then the plan's `ci:` section."""
    base = yamlio.load_fast(builtin_path("ci.yaml")) or {}
    override_path = workspace / PROFILES_DIR / "ci.yaml"
    merged = deep_merge(base, _load_override(override_path))
    profiles: dict[CiProfileName, CiProfile] = {}
    for name in CiProfileName:
        raw = merged.get(name.value, {})
        profiles[name] = _validated(CiProfile, raw, override_path if override_path.exists() else "built-in ci.yaml")
    plan_ci = dict(plan_ci or {})
    for name, profile in plan_ci.items():
        profiles[name] = profile
    normal, strict = CiProfileName.normal, CiProfileName.strict
    if normal in plan_ci and strict not in plan_ci:
        # A run that says how its tests run means it for strict phases too; strict keeps
        # its own static checks on top.
        profiles[strict] = plan_ci[normal].model_copy(
            update={"static_checks": [*profiles[strict].static_checks, *plan_ci[normal].static_checks]}
        )
    return profiles
