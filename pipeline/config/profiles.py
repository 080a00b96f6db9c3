"""Loading the workspace's profiles: the ruleset and CI profiles, merged over built-ins.

Built-in defaults ship in the package (pipeline/data); a workspace's profiles/*.yaml are
overrides merged key by key, so a project states only what it changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import yamlio
from pipeline.core.errors import InvalidInput
from pipeline.core.jsonio import canonical_json
from pipeline.core.overrides import PROFILES_DIR, _load_override, _validated, builtin_path, changed_keys, deep_merge
from pipeline.models.enums import CiProfileName
from pipeline.models.plan import CiProfile
from pipeline.models.ruleset import Ruleset


@dataclass(frozen=True)
class LoadedRuleset:
    ruleset: Ruleset
    sha256: str
    overridden: frozenset[str]  # dotted key paths the workspace file set
    source: str  # the override file, or "built-in"


def load_ruleset(workspace: Path) -> LoadedRuleset:
    base = yamlio.load_fast(builtin_path("ruleset.yaml"))
    override_path = workspace / PROFILES_DIR / "ruleset.yaml"
    override = _load_override(override_path)
    merged = deep_merge(base, override)
    source = override_path if override else "built-in ruleset"
    ruleset: Ruleset = _validated(Ruleset, merged, source, builtin=not override)
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
    override = _load_override(override_path)
    merged = deep_merge(base, override)
    source = override_path if override_path.exists() else "built-in ci.yaml"
    profiles: dict[CiProfileName, CiProfile] = {}
    for name in CiProfileName:
        raw = merged.get(name.value, {})
        profiles[name] = _validated(CiProfile, raw, source, builtin=not override)
    return with_plan_ci(profiles, plan_ci)


def with_plan_ci(
    profiles: Mapping[CiProfileName, CiProfile], plan_ci: Mapping[CiProfileName, CiProfile] | None
) -> dict[CiProfileName, CiProfile]:
    """`profiles` with a plan's own `ci:` section over them."""
    merged = dict(profiles)
    plan_ci = dict(plan_ci or {})
    merged.update(plan_ci)
    normal, strict = CiProfileName.normal, CiProfileName.strict
    if normal in plan_ci and strict not in plan_ci:
        # A run that says how its tests run means it for strict phases too; strict keeps
        # its own static checks on top.
        merged[strict] = plan_ci[normal].model_copy(
            update={"static_checks": [*profiles[strict].static_checks, *plan_ci[normal].static_checks]}
        )
    return merged
