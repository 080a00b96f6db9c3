"""`--from-md`: a markdown plan normalised into plan.yaml, and back (docs/architecture.md, Governance)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.commands.validate import validate_run
from pipeline.config.profiles import load_ruleset
from pipeline.core import yamlio
from pipeline.core.errors import ValidationErrors
from pipeline.plan.file import load_plan
from pipeline.plan.generate import new_run
from pipeline.plan.markdown import parse_markdown, render_markdown
from testing.gitrepo import init_repo_here

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "plan-from-markdown.md"


def _without_comments(text: str) -> str:
    return re.sub(r"<!--.*?-->\n?", "", text, flags=re.DOTALL)


def test_the_example_plan_round_trips() -> None:
    text = EXAMPLE.read_text()
    plan = parse_markdown(text, "docs/plan-from-markdown.md", "orders-api")
    rendered = render_markdown(plan)
    assert rendered == _without_comments(text)  # byte for byte, but for the comment
    assert parse_markdown(rendered, "again.md", "orders-api") == plan
    phases = [p for t in plan["tiers"] for p in t["phases"]]
    assert [p["phase_id"] for p in phases] == ["F1.1", "F1.2", "F2.1", "F2.2-staff"]
    assert phases[0]["builder_mode"] == "schema_heavy" and phases[0]["complexity"] == "high"
    assert phases[2]["scope"] == {"allow": ["app/api/**", "tests/api/**"], "deny": ["app/api/admin/**"]}
    assert phases[2]["description"].startswith("- `POST /orders` places")
    assert plan["description"].startswith("Orders API\n\nAdd an orders service")
    assert plan["tiers"][0]["description"].startswith("The tables and their migrations")


def test_new_run_from_markdown_writes_a_valid_plan(tmp_path: Path) -> None:
    path = new_run(tmp_path, "orders-api", from_md=str(EXAMPLE))
    plan, _ = load_plan(path, categories=load_ruleset(tmp_path).ruleset.categories)
    assert plan.project_id == "shop-backend"
    assert [p.phase_id for _, p in plan.phases()] == ["F1.1", "F1.2", "F2.1", "F2.2-staff"]
    assert plan.agents.builder is not None  # the starting plan's placeholder, to be edited
    assert f"# Normalised from {EXAMPLE}." in path.read_text()
    assert validate_run(init_repo_here(tmp_path), "orders-api") == []  # the plan's target is "."
    # plan.yaml -> markdown -> plan data: the same phases
    data = yamlio.load_fast(path)
    again = parse_markdown(render_markdown(data), "x.md", "orders-api")
    assert again["tiers"] == data["tiers"]


MALFORMED = """\
# Broken plan
project_id: shop

### Orphan phase
category: feature_implementation

## Tier one

### Good phase
category: feature_implementation
complexity: hgh

### No category here
scope: app/**

## Empty tier

## Tier three

### Typos
catgory: bugfix
mode: scaffolding_heavy

Free text.
complexity: low

### Unknown category
id: F3.9
category: feature_implementaton

### Duplicate id
id: f3.9
category: docs

### Automatic id taken
id: F1.1
category: docs
"""


def test_a_malformed_plan_is_reported_at_the_right_lines(tmp_path: Path) -> None:
    source = tmp_path / "comprehensive_plan.md"
    source.write_text(MALFORMED)
    with pytest.raises(ValidationErrors) as err:
        new_run(tmp_path, "r1", from_md=str(source))
    problems = err.value.problems
    expected = [
        (4, "phase 'Orphan phase' is not under a tier: add a `## Tier name` heading above it"),
        (11, "complexity 'hgh' is not one of low, medium, high (did you mean 'high'?)"),
        (13, "phase 'No category here' has no `category:` line (e.g. `category: feature_implementation`)"),
        (16, "tier 'Empty tier' has no phases: add `### Phase name` headings under it"),
        (21, "unknown key 'catgory' (did you mean 'category'?)"),
        (25, "`complexity:` line below free text: key lines go directly under the heading"),
        (29, "unknown category 'feature_implementaton' (did you mean 'feature_implementation'?)"),
        (32, "duplicate phase id 'f3.9' (first at line 28, as 'F3.9')"),
        (36, "phase id 'F1.1' is the automatic id of the phase at line 9; give one an `id:`"),
    ]
    assert problems == [f"{source}:{line}: {message}" for line, message in expected], "\n".join(problems)
    assert "fix" in err.value.fix
    assert not (tmp_path / "runs" / "r1" / "plan.yaml").exists()


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("", 1, "no tiers"),
        ("# A\n# B\n## T\n### P\ncategory: docs\n", 2, "a second `#` title"),
        ("## T\n###\ncategory: docs\n", 2, "empty ### heading"),
        ("## T\n### P\ncategory: docs\nscope: ,\n", 4, "`scope:` names no paths"),
        ("## T\nid: bad id\n### P\ncategory: docs\n", 2, "tier id 'bad id' is not valid"),
        ("safety_profile: critical\n## T\n### P\ncategory: docs\n", 1, "safety_profile 'critical' is not one of"),
        ("## T\n### P\ncategory: docs\ncategory: bugfix\n", 4, "duplicate `category:` (first at line 3)"),
    ],
)
def test_each_unreadable_thing_names_its_line(text: str, line: int, needle: str) -> None:
    with pytest.raises(ValidationErrors) as err:
        parse_markdown(text, "p.md", "r1", categories={"docs", "bugfix"})
    assert any(p.startswith(f"p.md:{line}: ") and needle in p for p in err.value.problems), err.value.problems


def test_comments_fences_and_prose_with_colons_are_text() -> None:
    text = """\
<!-- a note
## Not a tier -->
## Tier
### Phase
category: docs

Goal: explain the API.
```md
## not a heading
scope: not a key
```
<!-- one more --> Kept.
"""
    plan = parse_markdown(text, "p.md", "r1")
    assert [t["name"] for t in plan["tiers"]] == ["Tier"]
    description = plan["tiers"][0]["phases"][0]["description"]
    assert description == "Goal: explain the API.\n```md\n## not a heading\nscope: not a key\n```\n Kept."
    assert "description" not in plan
