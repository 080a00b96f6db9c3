"""PLAN_BOOTSTRAP from a project type and features: stack profile, reuse decisions, budget
modifiers in the compiled strategy, templates (docs/architecture.md: Governance, Reuse)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.commands.validate import validate_run
from pipeline.config import catalog
from pipeline.config.profiles import load_ci_profiles, load_ruleset
from pipeline.core import yamlio
from pipeline.core.errors import InvalidInput
from pipeline.models.catalog import QualityThresholds
from pipeline.plan.file import load_plan
from pipeline.plan.generate import decide, new_run, save_template
from pipeline.policy.strategy import compile_strategy
from pipeline.store.rundir import RunStore
from testing.gitrepo import init_repo_here

FEATURES = "auth_basic,rate_limiting,rest_api_crud"


def _plan(ws: Path, run_id: str = "r1", **options: str) -> tuple[Path, dict[str, Any]]:
    path = new_run(ws, run_id, **options)
    return path, yamlio.load_fast(path)


def _phases(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["phase_id"]: p for t in data["tiers"] for p in t["phases"]}


def _strategy(ws: Path, path: Path) -> Any:
    plan, _ = load_plan(path)
    loaded = load_ruleset(ws)
    return compile_strategy(
        plan,
        loaded.ruleset,
        plan_sha256="0" * 64,
        ruleset_sha256=loaded.sha256,
        ci_profiles=load_ci_profiles(ws, plan.ci),
        overridden=loaded.overridden,
    )


@pytest.mark.parametrize(
    ("match", "decision", "modifier"),
    [
        (1.0, "fork_and_adapt", -0.5),
        (0.8, "fork_and_adapt", -0.5),
        (0.79, "extract_components", -0.25),
        (0.4, "extract_components", -0.25),
        (0.39, "greenfield", 0.0),
        (0.0, "greenfield", 0.0),
    ],
)
def test_the_decision_follows_the_match(match: float, decision: str, modifier: float) -> None:
    assert decide(match, QualityThresholds()) == (decision, modifier)


def test_project_type_and_features_give_reuse_and_greenfield_phases(tmp_path: Path) -> None:
    path, data = _plan(tmp_path, project_type="api_service", features=FEATURES)
    plan, _ = load_plan(path, categories=load_ruleset(tmp_path).ruleset.categories)  # a valid plan
    assert plan.stack is not None and plan.stack.profile == "web_fastapi_pg"
    components = {"language": "python", "backend": "fastapi", "db": "postgres", "packaging": "docker"}
    assert data["stack"]["components"] == components
    phases = _phases(data)
    by_feature = {p["reuse"]["feature"]: p for p in phases.values() if "reuse" in p}
    auth, limits, crud = by_feature["auth_basic"], by_feature["rate_limiting"], by_feature["rest_api_crud"]
    assert auth["task_category"] == limits["task_category"] == "external_feature_reuse"
    assert auth["reuse"]["decision"] == "fork_and_adapt" and auth["reuse"]["budget_modifier"] == -0.5
    assert auth["reuse"]["source"] == {
        "id": "fastapi_users",
        "repo": "https://github.com/fastapi-users/fastapi-users",
        "path": "fastapi_users/",
        "licence": "MIT",
        "quality_score": 0.9,
    }
    assert "user manager" in auth["reuse"]["adapt"] and "THIRD_PARTY_NOTICES.md" in auth["description"]
    assert limits["reuse"]["decision"] == "extract_components" and limits["reuse"]["budget_modifier"] == -0.25
    assert limits["reuse"]["source"]["id"] == "slowapi"  # the better match of two
    assert crud["task_category"] == "feature_implementation" and crud["reuse"]["decision"] == "greenfield"
    assert "source" not in crud["reuse"] and crud["complexity"] == "medium"
    assert "THIRD_PARTY*" in auth["scope"]["allow"] and "app/**" in crud["scope"]["allow"]
    # auth_basic + rate_limiting are a catalog combination: one tier, with an integration phase
    tiers = {t["name"]: [p["phase_id"] for p in t["phases"]] for t in data["tiers"]}
    assert tiers == {"Secured api": ["F1.1", "F1.2", "F1.3"], "Api features": ["F2.1"]}
    assert phases["F1.3"]["name"] == "Integrate auth_basic + rate_limiting"
    # the decisions are shown in the plan's header
    text = path.read_text()
    assert "stack profile web_fastapi_pg" in text
    assert "#   auth_basic     fork_and_adapt      -50%  fastapi_users (MIT, quality 0.90) matches 85% >= 80%" in text
    assert "#   rest_api_crud  greenfield           +0%  the catalog lists no source" in text


def test_the_budget_modifier_changes_the_compiled_incident_cap(tmp_path: Path) -> None:
    path, _ = _plan(tmp_path, project_type="api_service", features=FEATURES)
    strategy = _strategy(tmp_path, path)
    caps = {p.phase_id: (p.incident_token_cap, p.budget_modifier, p.why) for p in strategy.phases}
    # the modifier applies to the greenfield budget of the same feature (auth_basic is a
    # security_auth_change feature: 150000), not to external_feature_reuse's own cap
    cap, modifier, why = caps["F1.1"]
    assert (cap, modifier) == (75000, -0.5)
    assert why["incident_token_cap"] == "reuse"
    assert why["reuse_base"] == "greenfield security_auth_change: 150000"
    assert why["budget_modifier"] == "fork_and_adapt (match 85%) -50%: 150000 -> 75000"
    assert caps["F1.2"][:2] == (187500, -0.25)
    assert caps["F2.1"][:2] == (250000, 0.0) and "budget_modifier" not in caps["F2.1"][2]
    f11 = strategy.phase("F1.1")
    assert f11.reuse is not None and f11.reuse.source is not None and f11.reuse.source.licence == "MIT"
    assert f11.allowed_licences == ["MIT", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "ISC"]
    assert not f11.auto_apply and f11.ci_profile.value == "strict"
    assert strategy.phase("F2.1").allowed_licences == []
    # the tier budget is 3 x the (modified) incident caps
    assert strategy.tiers[0].token_cap == 3 * (75000 + 187500 + 250000)


def test_the_stack_modifier_combines_with_the_reuse_modifier(tmp_path: Path) -> None:
    path, data = _plan(tmp_path, project_type="rag_app", features="vector_search,health_checks")
    assert data["stack"]["profile"] == "fullstack_rag" and data["stack"]["budget_modifier"] == 0.25
    strategy = _strategy(tmp_path, path)
    by_name = {p.name: p for p in strategy.phases}
    reuse = by_name["Reuse vector_search from qdrant_client"]  # match 45 %: extract, -25 %
    assert reuse.incident_token_cap == round(250000 * 0.75 * 1.25)
    assert reuse.why["incident_token_cap"] == "reuse+stack"
    assert reuse.why["budget_modifier"] == (
        "extract_components (match 45%) -25%; stack fullstack_rag +25%: 250000 -> 234375"
    )
    build = by_name["Build health_checks"]
    assert build.incident_token_cap == round(250000 * 1.25) and build.why["incident_token_cap"] == "stack"


def test_an_edited_modifier_or_an_explicit_cap_is_what_counts(tmp_path: Path) -> None:
    path, _ = _plan(tmp_path, project_type="api_service", features=FEATURES)
    rt = yamlio.load_roundtrip(path)
    yamlio.set_value(rt, ("tiers", 0, "phases", 0, "reuse", "budget_modifier"), -0.1)
    yamlio.set_value(rt, ("tiers", 0, "phases", 1, "incident_token_cap"), 123456)
    yamlio.dump_roundtrip(rt, path)
    assert "# Reuse decisions" in path.read_text()  # the header survives the edit
    strategy = _strategy(tmp_path, path)
    assert strategy.phase("F1.1").incident_token_cap == 135000
    f12 = strategy.phase("F1.2")
    assert f12.incident_token_cap == 123456 and f12.why["incident_token_cap"] == "plan"
    assert f12.why["budget_modifier"] == (
        "extract_components (match 70%) -25%: not applied, the plan sets incident_token_cap"
    )


def test_a_reuse_source_under_a_refused_licence_is_refused_before_the_run(tmp_path: Path) -> None:
    path, _ = _plan(tmp_path, project_type="api_service", features=FEATURES)
    rt = yamlio.load_roundtrip(path)
    yamlio.set_value(rt, ("tiers", 0, "phases", 0, "reuse", "source", "licence"), "GPL-3.0")
    yamlio.dump_roundtrip(rt, path)
    problems = validate_run(tmp_path, "r1")
    assert len(problems) == 1
    assert "F1.1: source https://github.com/fastapi-users/fastapi-users is licensed GPL-3.0" in problems[0]
    with pytest.raises(InvalidInput, match="refused in zero-intervention runs"):
        _strategy(tmp_path, path)


def test_doit_new_run_prints_the_decisions(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "new_run", "--run", "api", "--project-type", "api_service",
         "--features", FEATURES, "--description", "An API for the shop."],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "wrote runs/api/plan.yaml"
    source = "https://github.com/fastapi-users/fastapi-users (MIT)"
    assert f"  F1.1 auth_basic: fork_and_adapt from {source}, match 85%, budget -50%" in lines
    assert "  F2.1 rest_api_crud: greenfield, match 0%, budget +0%" in lines
    assert yamlio.load_fast(tmp_path / "runs/api/plan.yaml")["description"] == "An API for the shop."
    assert validate_run(init_repo_here(tmp_path), "api") == []  # the plan's target is "."


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"project_type": "api_servce", "features": "auth_basic"}, "did you mean 'api_service'"),
        ({"project_type": "api_service", "features": "auth_basc"}, "'auth_basc' (did you mean 'auth_basic'?)"),
        ({"project_type": "api_service", "features": "auth_basic,auth_basic"}, "requested twice"),
        ({"project_type": "api_service", "features": " , "}, "--features lists no feature"),
        ({"features": "auth_basic"}, "--features needs --project-type"),
        ({"project_type": "api_service"}, "--project-type needs --features"),
        ({"template": "t", "features": "auth_basic", "project_type": "api_service"}, "cannot be combined"),
        ({"from_md": "plan.md", "template": "t"}, "cannot be combined"),
        ({"template": "nope"}, "template nope not found"),
    ],
)
def test_bad_planning_options_are_clear_errors(tmp_path: Path, options: dict[str, str], needle: str) -> None:
    with pytest.raises(InvalidInput) as err:
        new_run(tmp_path, "r1", **options)
    assert needle in err.value.message and err.value.fix
    assert not RunStore(tmp_path, "r1").plan_path.exists()


def test_a_plan_saved_as_a_template_starts_the_next_run(tmp_path: Path) -> None:
    _, data = _plan(tmp_path, project_type="api_service", features=FEATURES, description="shop api")
    saved = save_template(tmp_path, "r1", "secured")
    assert saved == tmp_path / catalog.TEMPLATES_DIR / "api_service" / "secured.yaml"
    assert "# Reuse decisions" in saved.read_text() and yamlio.load_fast(saved)["run_id"] == "secured"
    for template in ("secured", "api_service/secured", str(saved)):
        run_id = f"next-{abs(hash(template)) % 1000}"
        again = yamlio.load_fast(new_run(tmp_path, run_id, template=template))
        assert again == {**data, "run_id": run_id}
    new_run(tmp_path, "typed", template="secured", project_type="api_service")
    assert catalog.workspace_problems(tmp_path) == []
    from pipeline.commands.validate import validate_workspace

    assert validate_workspace(init_repo_here(tmp_path), "typed") == []  # the plan's target is "."
    with pytest.raises(InvalidInput, match="already exists"):
        save_template(tmp_path, "r1", "secured")
    new_run(tmp_path, "plain")
    with pytest.raises(InvalidInput, match="names no project type"):
        save_template(tmp_path, "plain", "x")
    other = save_template(tmp_path, "plain", "secured", project_type="cli_tool")
    with pytest.raises(InvalidInput, match="several project types"):
        new_run(tmp_path, "amb", template="secured")
    assert other.parent.name == "cli_tool"


def test_description_may_name_a_file(tmp_path: Path) -> None:
    (tmp_path / "about.md").write_text("Build the orders API.\n\nWith care.\n")
    _, data = _plan(tmp_path, description="about.md")
    assert data["description"] == "Build the orders API.\n\nWith care."


def test_a_long_description_is_text_not_a_file_name(tmp_path: Path) -> None:
    text = "An API for the shop " * 30
    _, data = _plan(tmp_path, description=text)
    assert data["description"] == text.strip()
