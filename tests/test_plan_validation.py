"""Plan files: every bad plan gets its own clear, located error (docs/architecture.md, Invariants; README.md, The plan).

Each test writes a real runs/<R>/plan.yaml into a temp workspace and checks the exact
`file:line:col: $.path: message` lines a person would see.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.core import yamlio
from pipeline.core.errors import InvalidInput, ValidationErrors
from pipeline.models.enums import Complexity
from pipeline.models.plan import Plan
from pipeline.plan.file import load_plan, plan_sha256, read_plan, write_new_plan

CATEGORIES = {"feature_scaffolding", "tests", "docs"}

# Line numbers in the comments are the ones the expected messages below refer to.
VALID = """\
# runs/R/plan.yaml — a sample plan
run_id: R
project_id: demo
description: A sample plan
target:
  repo: .            # the workspace
safety_profile: normal
tiers:
  - tier_id: T1
    name: Core
    phases:
      - phase_id: F1.1
        name: First
        task_category: feature_scaffolding
        complexity: medium
      - phase_id: F1.2
        name: Second
        task_category: tests
        complexity: low
  # the second tier
  - tier_id: T2
    name: Docs
    phases:
      - phase_id: F2.1
        name: Write docs
        description: |
          Free text handed to the builder.
        task_category: docs
        scope: {allow: ["docs/**"]}   # docs only
"""
# line 12: F1.1   line 16: F1.2   line 21: T2   line 24: F2.1


def write_plan(text: str, run: str = "R") -> Path:
    """Write `text` as runs/<run>/plan.yaml under the current directory; the relative path."""
    path = Path("runs") / run / "plan.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def edited(old: str, new: str) -> str:
    """VALID with the one occurrence of `old` replaced."""
    assert VALID.count(old) == 1, old
    return VALID.replace(old, new)


def problems_of(text: str, run: str = "R", categories: set[str] | None = None) -> list[str]:
    path = write_plan(text, run)
    with pytest.raises(ValidationErrors) as info:
        load_plan(path, categories)
    with pytest.raises(ValidationErrors) as fast:  # `doit validate`'s fast path says the same
        read_plan(path, categories)
    assert (fast.value.problems, fast.value.fix) == (info.value.problems, info.value.fix)
    return info.value.problems


def problem_of(text: str, **kw: object) -> str:
    problems = problems_of(text, **kw)  # type: ignore[arg-type]
    assert len(problems) == 1, problems
    return problems[0]


def error_of(text: str) -> InvalidInput:
    path = write_plan(text)
    with pytest.raises(InvalidInput) as info:
        load_plan(path)
    with pytest.raises(InvalidInput) as fast:  # `doit validate`'s fast path says the same
        read_plan(path)
    assert (fast.value.message, fast.value.fix) == (info.value.message, info.value.fix)
    return info.value


# --------------------------------------------------------------------------- valid plans


def test_valid_plan_loads_frozen(workdir: Path) -> None:
    plan, rt = load_plan(write_plan(VALID), CATEGORIES)
    assert isinstance(plan, Plan)
    assert [p.phase_id for _, p in plan.phases()] == ["F1.1", "F1.2", "F2.1"]
    assert plan.tiers[0].phases[0].complexity is Complexity.medium
    assert plan.tiers[1].phases[0].scope.allow == ["docs/**"]
    assert plan.tiers[1].phases[0].description == "Free text handed to the builder.\n"
    with pytest.raises(ValidationError):
        plan.run_id = "other"  # type: ignore[misc]
    assert rt.position(("tiers", 1, "phases", 0, "phase_id")) == (24, 9)


def test_plan_sha256_is_of_the_bytes(workdir: Path) -> None:
    import hashlib

    path = write_plan(VALID)
    assert plan_sha256(path) == hashlib.sha256(VALID.encode()).hexdigest()
    with pytest.raises(InvalidInput, match="file not found"):
        plan_sha256(Path("runs/nope/plan.yaml"))


# --------------------------------------------------------------------------- schema errors


def test_typo_in_enum_value(workdir: Path) -> None:
    assert problem_of(edited("complexity: low", "complexity: hgh")) == (
        "runs/R/plan.yaml:19:9: $.tiers[0].phases[1].complexity: 'hgh' is not one of ['low', 'medium', 'high']"
    )


def test_unknown_key_suggests_the_known_one(workdir: Path) -> None:
    assert problem_of(edited("complexity: medium", "complexty: medium")) == (
        "runs/R/plan.yaml:15:9: $.tiers[0].phases[0].complexty: unknown key 'complexty' (did you mean 'complexity'?)"
    )


def test_unknown_key_inside_a_union_is_found(workdir: Path) -> None:
    # builder is `str | AgentSpec | None`: the mapping was meant as an AgentSpec
    text = edited("complexity: low\n", "complexity: low\n        builder: {comand: x}\n")
    assert problem_of(text) == (
        "runs/R/plan.yaml:20:19: $.tiers[0].phases[1].builder.comand: unknown key 'comand' (did you mean 'command'?)"
    )


def test_missing_required_key_points_at_its_mapping(workdir: Path) -> None:
    assert problem_of(edited("        name: Second\n", "")) == (
        "runs/R/plan.yaml:16:9: $.tiers[0].phases[1]: 'name' is a required property"
    )


def test_bad_id_is_explained(workdir: Path) -> None:
    assert problem_of(edited("phase_id: F1.2", "phase_id: bad id!")) == (
        "runs/R/plan.yaml:16:9: $.tiers[0].phases[1].phase_id: 'bad id!' is not a valid id: "
        "use letters, digits, '.', '_', '-' (max 64), starting with a letter or digit"
    )


def test_unknown_ci_profile_name(workdir: Path) -> None:
    text = edited("safety_profile: normal\n", "safety_profile: normal\nci:\n  nrmal: {}\n")
    assert problem_of(text) == (
        "runs/R/plan.yaml:9:3: $.ci.nrmal: key 'nrmal' is not one of ['normal', 'strict'] (did you mean 'normal'?)"
    )


def test_empty_tier(workdir: Path) -> None:
    start = VALID.index("    phases:\n      - phase_id: F2.1")
    assert problem_of(VALID[:start] + "    phases: []\n") == (
        "runs/R/plan.yaml:23:5: $.tiers[1].phases: tier T2 has no phases"
    )


def test_no_tiers(workdir: Path) -> None:
    text = VALID[: VALID.index("tiers:")] + "tiers: []\n"
    assert problem_of(text) == (
        "runs/R/plan.yaml:8:1: $.tiers: the plan has no tiers; add at least one tier with phases"
    )


def test_not_a_mapping(workdir: Path) -> None:
    err = error_of("")
    assert err.message == (
        "runs/R/plan.yaml:1:1: expected a mapping (run_id, project_id, tiers, ...), found an empty file"
    )


# --------------------------------------------------------------------------- plan rules


def test_duplicate_phase_id_names_the_first(workdir: Path) -> None:
    assert problem_of(edited("phase_id: F2.1", "phase_id: F1.1")) == (
        "runs/R/plan.yaml:24:9: $.tiers[1].phases[0].phase_id: duplicate phase id 'F1.1' (first at line 12)"
    )


def test_phase_ids_differing_only_in_case_collide(workdir: Path) -> None:
    assert problem_of(edited("phase_id: F2.1", "phase_id: f1.1")) == (
        "runs/R/plan.yaml:24:9: $.tiers[1].phases[0].phase_id: phase id 'f1.1' differs from "
        "'F1.1' (first at line 12) only in case; ids must differ ignoring case"
    )


def test_duplicate_tier_id(workdir: Path) -> None:
    assert problem_of(edited("tier_id: T2", "tier_id: T1")) == (
        "runs/R/plan.yaml:21:5: $.tiers[1].tier_id: duplicate tier id 'T1' (first at line 9)"
    )


def test_unknown_category_suggests_the_known_one(workdir: Path) -> None:
    text = edited("task_category: tests", "task_category: test")
    assert problem_of(text, categories=CATEGORIES) == (
        "runs/R/plan.yaml:18:9: $.tiers[0].phases[1].task_category: "
        "unknown task_category 'test' (did you mean 'tests'?)"
    )


def test_unknown_category_without_a_close_match_lists_the_known(workdir: Path) -> None:
    text = edited("task_category: tests", "task_category: zzz")
    assert problem_of(text, categories=CATEGORIES) == (
        "runs/R/plan.yaml:18:9: $.tiers[0].phases[1].task_category: "
        "unknown task_category 'zzz'; known categories: docs, feature_scaffolding, tests"
    )


def test_categories_are_not_checked_without_a_ruleset(workdir: Path) -> None:
    plan, _ = load_plan(write_plan(edited("task_category: tests", "task_category: zzz")))
    assert plan.tiers[0].phases[1].task_category == "zzz"


def test_run_id_must_match_its_directory(workdir: Path) -> None:
    assert problem_of(VALID, run="other") == (
        "runs/other/plan.yaml:2:1: $.run_id: run_id 'R' does not match the run directory "
        "runs/other; rename one so they agree"
    )


# --------------------------------------------------------------------------- YAML surprises


def test_unquoted_date(workdir: Path) -> None:
    assert problem_of(edited("name: Write docs", "name: 2024-01-01")) == (
        "runs/R/plan.yaml:25:9: $.tiers[1].phases[0].name: 2024-01-01 was read as a date; quote it: '2024-01-01'"
    )


def test_quoted_date_is_a_string(workdir: Path) -> None:
    plan, _ = load_plan(write_plan(edited("name: Write docs", "name: '2024-01-01'")))
    assert plan.tiers[1].phases[0].name == "2024-01-01"


def test_unquoted_number_where_a_string_is_expected(workdir: Path) -> None:
    assert problem_of(edited("phase_id: F1.2", "phase_id: 1.10")) == (
        "runs/R/plan.yaml:16:9: $.tiers[0].phases[1].phase_id: 1.10 was read as the number 1.1; quote it: '1.10'"
    )


def test_unquoted_boolean_where_a_string_is_expected(workdir: Path) -> None:
    assert problem_of(edited("name: Core", "name: true")) == (
        "runs/R/plan.yaml:10:5: $.tiers[0].name: true was read as the boolean true; quote it: 'true'"
    )


def test_unquoted_number_inside_a_flow_mapping(workdir: Path) -> None:
    text = edited("complexity: low\n", "complexity: low\n        builder: {command: 1.10, timeout_s: 5}\n")
    assert problem_of(text) == (
        "runs/R/plan.yaml:20:19: $.tiers[0].phases[1].builder.command: "
        "1.10 was read as the number 1.1; quote it: '1.10'"
    )


def test_date_under_an_unknown_key_reports_both(workdir: Path) -> None:
    text = edited("complexity: low\n", "complexity: low\n        due: 2024-01-01\n")
    assert problems_of(text) == [
        "runs/R/plan.yaml:20:9: $.tiers[0].phases[1].due: 2024-01-01 was read as a date; quote it: '2024-01-01'",
        "runs/R/plan.yaml:20:9: $.tiers[0].phases[1].due: unknown key 'due'",
    ]


def test_yaml11_boolean_for_a_boolean_field(workdir: Path) -> None:
    text = edited("complexity: low\n", "complexity: low\n        auto_apply: yes\n")
    assert problem_of(text) == (
        "runs/R/plan.yaml:20:9: $.tiers[0].phases[1].auto_apply: "
        "YAML 1.1 boolean 'yes' is a string here; write true or false"
    )


def test_yes_is_a_string_for_a_string_field(workdir: Path) -> None:
    # YAML 1.2: `yes` is the string "yes", which is what a name means
    plan, _ = load_plan(write_plan(edited("name: Core", "name: yes")))
    assert plan.tiers[0].name == "yes"


# --------------------------------------------------------------------------- broken YAML


def test_merge_conflict_markers(workdir: Path) -> None:
    text = edited(
        "        complexity: low\n",
        "<<<<<<< HEAD\n        complexity: low\n=======\n        complexity: high\n>>>>>>> feature\n",
    )
    err = error_of(text)
    assert isinstance(err, ValidationErrors)
    assert err.problems == [
        "runs/R/plan.yaml:19: merge conflict marker '<<<<<<<'",
        "runs/R/plan.yaml:21: merge conflict marker '======='",
        "runs/R/plan.yaml:23: merge conflict marker '>>>>>>>'",
    ]
    assert err.fix == "resolve the merge conflict in the plan and remove the markers"


def test_yaml_syntax_error(workdir: Path) -> None:
    err = error_of(edited("name: Core", "name: [Core"))
    assert err.message == (
        "runs/R/plan.yaml:11:11: expected ',' or ']', but got ':' (while parsing a flow sequence at line 10)"
    )
    assert err.fix == "fix the YAML syntax at line 11, column 11 of runs/R/plan.yaml"


def test_tab_indentation(workdir: Path) -> None:
    err = error_of(edited("    name: Core", "\tname: Core"))
    assert err.message.startswith("runs/R/plan.yaml:10:1: ")
    assert "'\\t'" in err.message


def test_duplicate_yaml_key(workdir: Path) -> None:
    err = error_of(edited("        name: First\n", "        name: First\n        name: Again\n"))
    assert isinstance(err, ValidationErrors)
    assert err.problems == ["runs/R/plan.yaml:14:9: duplicate key 'name' (first at line 13)"]


def test_several_problems_are_reported_together_in_file_order(workdir: Path) -> None:
    text = (
        VALID.replace("complexity: medium", "complexty: medium")
        .replace("complexity: low", "complexity: hgh")
        .replace("phase_id: F2.1", "phase_id: F1.1")
        .replace("name: Write docs", "name: 2024-01-01")
    )
    path = write_plan(text)
    with pytest.raises(ValidationErrors) as info:
        load_plan(path, CATEGORIES)
    err = info.value
    assert err.problems == [
        "runs/R/plan.yaml:15:9: $.tiers[0].phases[0].complexty: unknown key 'complexty' (did you mean 'complexity'?)",
        "runs/R/plan.yaml:19:9: $.tiers[0].phases[1].complexity: 'hgh' is not one of ['low', 'medium', 'high']",
        "runs/R/plan.yaml:24:9: $.tiers[1].phases[0].phase_id: duplicate phase id 'F1.1' (first at line 12)",
        "runs/R/plan.yaml:25:9: $.tiers[1].phases[0].name: 2024-01-01 was read as a date; quote it: '2024-01-01'",
    ]
    assert err.message.startswith("4 problems:\n  runs/R/plan.yaml:15:9: ")
    assert err.fix == "edit runs/R/plan.yaml at the lines above; `doit validate --run R` rechecks"
    assert path.read_text(encoding="utf-8") == text  # a bad plan is never rewritten


# --------------------------------------------------------------------------- editing


NEW_PHASE = {
    "phase_id": "F1.3",
    "name": "Debt cleanup",
    "description": "Fix the minor issues\nleft by this tier.\n",
    "task_category": "tests",
    "complexity": Complexity.low,
    "scope": {"allow": ["src/**", "tests/**"]},
}
NEW_PHASE_YAML = """\
      - phase_id: F1.3
        name: Debt cleanup
        description: |
          Fix the minor issues
          left by this tier.
        task_category: tests
        complexity: low
        scope:
          allow:
            - src/**
            - tests/**
"""


def test_append_phase_keeps_everything_else_byte_for_byte(workdir: Path) -> None:
    path = write_plan(VALID)
    _, rt = load_plan(path)
    yamlio.append_item(rt, ("tiers", 0, "phases"), NEW_PHASE)
    yamlio.dump_roundtrip(rt, path)
    # the comment introducing tier T2 still sits right before T2
    at = VALID.index("  # the second tier")
    assert path.read_text(encoding="utf-8") == VALID[:at] + NEW_PHASE_YAML + VALID[at:]
    plan, _ = load_plan(path, CATEGORIES)
    assert [p.phase_id for p in plan.tiers[0].phases] == ["F1.1", "F1.2", "F1.3"]


def test_append_to_the_last_list_keeps_trailing_comments_last(workdir: Path) -> None:
    path = write_plan(VALID + "# end of plan\n")
    _, rt = load_plan(path)
    yamlio.append_item(rt, ("tiers", 1, "phases"), {**NEW_PHASE, "phase_id": "F2.2"})
    yamlio.dump_roundtrip(rt, path)
    expected = VALID + NEW_PHASE_YAML.replace("F1.3", "F2.2") + "# end of plan\n"
    assert path.read_text(encoding="utf-8") == expected


def test_set_value_changes_one_line(workdir: Path) -> None:
    path = write_plan(VALID)
    _, rt = load_plan(path)
    yamlio.set_value(rt, ("tiers", 0, "phases", 1, "complexity"), "high")
    yamlio.set_value(rt, ("target", "base"), "main")
    yamlio.dump_roundtrip(rt, path)
    expected = VALID.replace("complexity: low", "complexity: high").replace(
        "  repo: .            # the workspace\n",
        "  repo: .            # the workspace\n  base: main\n",
    )
    assert path.read_text(encoding="utf-8") == expected


def test_unchanged_round_trip_writes_nothing(workdir: Path) -> None:
    path = write_plan(VALID)
    before = path.stat().st_mtime_ns
    _, rt = load_plan(path)
    yamlio.dump_roundtrip(rt, path)
    assert path.read_text(encoding="utf-8") == VALID
    assert path.stat().st_mtime_ns == before


def test_round_trip_keeps_other_indentation_and_crlf(workdir: Path) -> None:
    text = (
        "run_id: R\r\n"
        "project_id: demo\r\n"
        "target:\r\n"
        "    repo: .   # four spaces, sequences not indented\r\n"
        "tiers:\r\n"
        "-   tier_id: T1\r\n"
        "    name: Core\r\n"
        "    phases:\r\n"
        "    -   phase_id: F1.1\r\n"
        "        name: First\r\n"
        "        task_category: tests\r\n"
    )
    path = write_plan(text)
    path.write_bytes(text.encode())
    _, rt = load_plan(path)
    yamlio.dump_roundtrip(rt, path)
    assert path.read_bytes() == text.encode()


def test_edit_of_a_missing_path_is_refused(workdir: Path) -> None:
    _, rt = load_plan(write_plan(VALID))
    with pytest.raises(InvalidInput, match=r"\$\.tiers\[5\] does not exist"):
        yamlio.append_item(rt, ("tiers", 5, "phases"), NEW_PHASE)
    with pytest.raises(InvalidInput, match="is not a list"):
        yamlio.append_item(rt, ("tiers", 0, "name"), "x")


def test_write_new_plan_reads_back_and_never_overwrites(workdir: Path) -> None:
    plan_dict = {
        "run_id": "fresh",
        "project_id": "demo",
        "description": "Line one\nline two\n",
        "tiers": [{"tier_id": "T1", "name": "on", "phases": [{**NEW_PHASE, "name": "1.10"}]}],
    }
    path = Path("runs/fresh/plan.yaml")
    write_new_plan(path, plan_dict, header="runs/fresh/plan.yaml — edit before start_run")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# runs/fresh/plan.yaml — edit before start_run\nrun_id: fresh\n")
    assert "name: 'on'\n" in text and "name: '1.10'\n" in text  # quoted: no surprise on reload
    plan, _ = load_plan(path, CATEGORIES)
    assert plan.tiers[0].name == "on"
    assert plan.tiers[0].phases[0].name == "1.10"
    with pytest.raises(InvalidInput, match="a plan already exists"):
        write_new_plan(path, plan_dict)
    assert path.read_text(encoding="utf-8") == text


def test_write_new_plan_refuses_an_invalid_plan(workdir: Path) -> None:
    path = Path("runs/bad/plan.yaml")
    with pytest.raises(ValidationErrors) as info:
        write_new_plan(path, {"run_id": "bad", "project_id": "p", "tiers": []})
    assert info.value.problems == ["runs/bad/plan.yaml: $.tiers: [] should be non-empty"]
    assert not path.exists()


# --------------------------------------------------------------------------- fast reader


def test_load_fast_reads_yaml(workdir: Path) -> None:
    path = Path("profile.yaml")
    path.write_text("a: 1\nb: [x, y]\n", encoding="utf-8")
    assert yamlio.load_fast(path) == {"a": 1, "b": ["x", "y"]}


def test_load_fast_syntax_error(workdir: Path) -> None:
    path = Path("profile.yaml")
    path.write_text("a: 1\n b: 2\n", encoding="utf-8")
    with pytest.raises(InvalidInput) as info:
        yamlio.load_fast(path)
    assert info.value.message.startswith("profile.yaml:2:3: mapping values are not allowed")


def test_load_fast_duplicate_key(workdir: Path) -> None:
    path = Path("profile.yaml")
    path.write_text("a: 1\nb: 2\na: 3\n", encoding="utf-8")
    with pytest.raises(InvalidInput) as info:
        yamlio.load_fast(path)
    assert info.value.message.startswith("profile.yaml:3:1: duplicate key 'a' (first at line 1)")


def test_missing_file(workdir: Path) -> None:
    with pytest.raises(InvalidInput, match="file not found"):
        load_plan(Path("runs/nope/plan.yaml"))
    with pytest.raises(InvalidInput, match="file not found"):
        yamlio.load_fast(Path("nope.yaml"))


@pytest.mark.parametrize(
    "text",
    [
        "a\nb\n",
        "a\nb\n\n",
        " lead\nx",
        "x\n",
        "\n",
        "1.10",
        "yes",
        "2024-01-01",
        "",
        "x\r\ny",
        "x\x85y",
        "x\x00y\nz",
        "- x\ny",
        "#x\ny",
    ],
)
def test_dump_new_reads_back_exactly(text: str, workdir: Path) -> None:
    path = Path("doc.yaml")
    path.write_text(yamlio.dump_new({"k": text, "l": [text], "m": {"n": text}}), encoding="utf-8")
    assert yamlio.to_plain(yamlio.load_roundtrip(path).data) == {
        "k": text,
        "l": [text],
        "m": {"n": text},
    }
    assert yamlio.find_surprises(yamlio.load_roundtrip(path)) == []
