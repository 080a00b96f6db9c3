"""Stack profiles and the feature catalog: the shipped files and their own rules (docs/architecture.md, Reuse)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.commands.validate import validate_workspace
from pipeline.config import catalog
from pipeline.core.errors import InvalidInput, ValidationErrors
from pipeline.core.overrides import builtin_path
from pipeline.plan.generate import new_run, usable_sources
from pipeline.policy import licences

REPO = Path(__file__).resolve().parent.parent
PROFILES = (
    "web_fastapi_pg",
    "fullstack_rag",
    "ecommerce_platform",
    "data_pipeline",
    "minimal_api",
    "cli_tool",
    "python_library",
)


def _workspace_with(tmp_path: Path, *, stacks: str | None = None, features: str | None = None) -> Path:
    ws = tmp_path / "ws"
    if stacks is not None:
        (ws / "profiles").mkdir(parents=True, exist_ok=True)
        (ws / "profiles" / "stacks.yaml").write_text(stacks)
    if features is not None:
        (ws / "catalog").mkdir(parents=True, exist_ok=True)
        (ws / "catalog" / "features.yaml").write_text(features)
    ws.mkdir(parents=True, exist_ok=True)
    return ws


def _builtin(name: str) -> str:
    return builtin_path(name).read_text()


# -- the shipped files ---------------------------------------------------------------------


def test_the_repository_copies_are_the_builtin_files() -> None:
    # profiles/ holds plain files with this repository's changes only; stacks are not changed
    assert not (REPO / "profiles" / "stacks.yaml").exists()
    assert not any(p.is_symlink() for p in (REPO / "profiles").iterdir())
    assert (REPO / "catalog" / "features.yaml").read_text() == _builtin("features.yaml")


@pytest.mark.parametrize("root", [REPO, None], ids=["repository", "built-in"])
def test_shipped_stacks_and_catalog_follow_their_rules(root: Path | None, tmp_path: Path) -> None:
    ws = root or tmp_path
    assert catalog.workspace_problems(ws) == []
    loaded = catalog.load_workspace(ws)
    assert set(PROFILES) <= set(loaded.stacks.profiles)
    assert {"auth_basic", "rate_limiting", "rest_api_crud"} <= set(loaded.catalog.features)
    assert len(loaded.catalog.features) >= 6


def test_every_project_type_maps_to_exactly_one_profile() -> None:
    stacks = catalog.load_workspace(REPO).stacks
    owners: dict[str, list[str]] = {}
    for name, profile in stacks.profiles.items():
        for ptype in profile.project_types:
            owners.setdefault(ptype, []).append(name)
    assert set(owners) == set(stacks.project_types), "unmapped or undeclared project types"
    assert {t: o for t, o in owners.items() if len(o) != 1} == {}, "doubly mapped project types"
    assert catalog.profile_for(stacks, "api_service")[0] == "web_fastapi_pg"


def test_the_shipped_catalog_only_holds_whitelisted_sources_above_threshold() -> None:
    cat = catalog.load_workspace(REPO).catalog
    assert cat.licence_policy.allowed == list(licences.ALLOWED)
    for feature in cat.features.values():
        for source in feature.sources:
            assert licences.expression_allowed(source.licence)
            assert source.quality_score >= cat.thresholds.min_quality_score
    assert usable_sources(cat.features["rest_api_crud"], cat, "web_fastapi_pg") == []


# -- the rules -----------------------------------------------------------------------------

BAD_SOURCES = """\
version: 1
reviewed_on: '2026-11-01'
licence_policy:
  allowed: [MIT, GPL-3.0]
features:
  auth_basic:
    description: Basic auth
    category: auth
    complexity: high
    sources:
      - id: gpl_auth
        repo: https://example.invalid/gpl-auth
        licence: GPL-3.0-only
        quality_score: 0.9
        last_activity: 2026-10-01
        has_tests: true
        match: 0.9
      - id: weak_auth
        repo: https://example.invalid/weak
        licence: MIT
        quality_score: 0.4
        last_activity: '2026-10-01'
        has_tests: false
        compatible_stacks: [web_fastapi]
        match: 0.9
      - id: old_auth
        repo: https://example.invalid/old
        licence: BSD-3-Clause
        quality_score: 0.9
        last_activity: '2020-01-01'
        has_tests: true
        match: 0.9
      - id: old_auth
        repo: https://example.invalid/old2
        licence: ISC
        quality_score: 0.9
        last_activity: '2026-12-01'
        has_tests: true
        match: 0.9
combinations:
  pair:
    features: [auth_basic, rate_limitng]
"""


def test_a_catalog_breaking_its_rules_is_an_error_at_the_line(tmp_path: Path) -> None:
    ws = _workspace_with(tmp_path, features=BAD_SOURCES)
    problems = catalog.workspace_problems(ws)
    path = ws / "catalog" / "features.yaml"
    text = "\n".join(problems)

    def at(line: int, needle: str) -> None:
        assert any(p.startswith(f"{path}:{line}:") and needle in p for p in problems), f"{line} {needle}\n{text}"

    at(4, "'GPL-3.0' cannot be allowed")
    at(13, "licence GPL-3.0-only is refused in zero-intervention runs")
    at(21, "quality_score 0.4 is below the threshold 0.7")
    at(23, "has no tests")
    at(24, "unknown stack profile 'web_fastapi' (did you mean 'web_fastapi_pg'?)")
    at(30, "no activity for 2496 days before reviewed_on (at most 730)")
    at(33, "duplicate source id 'old_auth'")
    at(35, "licence ISC is refused")  # the policy narrowed the whitelist to MIT
    at(37, "after the catalog's reviewed_on")
    at(42, "unknown feature 'rate_limitng'")
    # `doit validate` reports them; planning refuses to use such a catalog
    assert set(problems) <= set(validate_workspace(ws))
    with pytest.raises(ValidationErrors) as err:
        new_run(ws, "r1", project_type="api_service", features="auth_basic")
    assert "planning never uses a catalog that breaks its own rules" in err.value.fix


def test_a_catalog_schema_error_names_file_line_and_path(tmp_path: Path) -> None:
    broken = _builtin("features.yaml").replace("    complexity: low\n", "    complexity: lo\n", 1)
    ws = _workspace_with(tmp_path, features=broken)
    problems = catalog.workspace_problems(ws)
    assert len(problems) == 1, problems
    assert "features.yaml:" in problems[0] and "$.features.pagination.complexity" in problems[0]
    assert "'lo' is not one of" in problems[0]


STACKS = """\
version: 1
project_types:
  api_service: an API
  cli_tool: a CLI
  orphan: nobody serves it
profiles:
  one:
    project_types: [api_service, cli_tool]
  two:
    project_types: [cli_tool, undeclared]
    preferred_sources: [no_such_source]
"""


def test_project_types_mapped_twice_or_never_are_errors(tmp_path: Path) -> None:
    ws = _workspace_with(tmp_path, stacks=STACKS)
    problems = catalog.workspace_problems(ws)
    path = ws / "profiles" / "stacks.yaml"
    expected = {
        5: "project type 'orphan' maps to no stack profile",
        10: "project type 'cli_tool' is mapped twice: by 'one' and by 'two'",
        11: "no catalog source has id 'no_such_source'",
    }
    for line, needle in expected.items():
        assert any(p.startswith(f"{path}:{line}:") and needle in p for p in problems), (line, problems)
    assert any("project type 'undeclared' is not declared" in p for p in problems)
    # the catalog's sources name stack profiles this file no longer has
    assert any("unknown stack profile 'web_fastapi_pg'" in p for p in problems)


def test_unknown_project_type_gets_a_did_you_mean(tmp_path: Path) -> None:
    stacks = catalog.load_workspace(tmp_path).stacks
    with pytest.raises(InvalidInput) as err:
        catalog.profile_for(stacks, "api_servce")
    assert "did you mean 'api_service'" in err.value.message
    assert "api_service" in err.value.fix


@pytest.mark.parametrize(
    ("expression", "ok"),
    [
        ("MIT", True),
        ("Apache-2.0", True),
        ("MIT OR GPL-3.0", True),
        ("MIT AND GPL-3.0", False),
        ("GPL-3.0-or-later", False),
        ("LGPL-2.1", False),
        ("MPL-2.0", False),
        ("NOASSERTION", False),
        ("", False),
    ],
)
def test_licence_expressions_against_the_whitelist(expression: str, ok: bool) -> None:
    assert licences.expression_allowed(expression) is ok
