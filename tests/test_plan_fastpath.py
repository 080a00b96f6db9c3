"""The plan's fast path (`read_plan`) reads and judges every plan as `load_plan` does.

Two pairs are held side by side: PyYAML's C parser (`yamlio.load_plain`) against ruamel
(YAML 1.1 against 1.2: `no`, `on`, `1:30`, `0o17`, `1e3` read differently), and pydantic's
strict validation against the plan's JSON Schema (jsonschema). The fast path may give up
(None, or "not valid") on anything; it must never give other data, or accept a plan that
`load_plan` refuses.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
from test_plan_validation import CATEGORIES, VALID, edited, write_plan  # the same plan fixtures, both paths

from pipeline.core import schemas, yamlio
from pipeline.core.errors import AutopackError, ValidationErrors
from pipeline.models.plan import Plan
from pipeline.plan import file as planfile
from pipeline.plan.file import load_plan, plan_schema, read_plan
from testing.runs import make_workspace, phase

REPO = Path(__file__).resolve().parents[1]

# Plain scalars on which YAML 1.1 (PyYAML) and 1.2 (ruamel) can disagree, and ordinary ones.
SCALARS = [
    *("no", "No", "NO", "yes", "on", "On", "off", "OFF", "y", "n", "Y", "N"),
    *("1:30", "190:20:30", "12:00", "0o17", "0x1F", "0b101", "012", "00", "1_000", "+1_0"),
    *("1e3", "1E3", "1.0e3", "-1.5e3", "1.", ".5", "-.5", "00.5", "1_0.5", "1.10", "1.2.3"),
    *(".inf", "-.inf", ".NaN", "-.nan", "inf", "nan", "2024-01-01", "2001-12-14t21:59:43.10-05:00"),
    *("true", "True", "tRue", "false", "null", "Null", "nUll", "~", "=", "<<", "<>"),
    *("0", "-0", "+1", "-1", "42", "1.5", "-0.0", "+1.5", ".", "..", "./src", "--", "-v", "+"),
    *("v1.2", "1a", "a1", "a:b", "a-b", "F1.1", "docs/**", "x # not a comment?"),
]


def _roundtrip_data(path: Path) -> Any:
    return yamlio.to_plain(yamlio.load_roundtrip(path).data)


def _fast_agrees(path: Path) -> Any:
    """load_plain's data for `path`, asserted equal (types included) to ruamel's."""
    fast = yamlio.load_plain(path)
    if fast is not None:
        slow = _roundtrip_data(path)
        assert repr(fast) == repr(slow), path.read_text()
    return fast


def _doc(tmp_path: Path, text: str, name: str = "doc.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


# --------------------------------------------------------------------------- YAML


@pytest.mark.parametrize("scalar", SCALARS)
def test_plain_scalars_read_as_ruamel_reads_them_or_not_at_all(tmp_path: Path, scalar: str) -> None:
    _fast_agrees(_doc(tmp_path, f"k: {scalar}\nl: [{scalar}]\nm:\n  - {scalar}\n"))
    _fast_agrees(_doc(tmp_path, f"{scalar}: 1\n", "key.yaml"))


@pytest.mark.parametrize(
    ("scalar", "expected"),
    [("no", "no"), ("on", "on"), ("yes", "yes"), ("off", "off"), ("true", True), ("null", None), ("7", 7)],
)
def test_yaml11_booleans_are_strings_as_in_yaml12(tmp_path: Path, scalar: str, expected: Any) -> None:
    assert yamlio.load_plain(_doc(tmp_path, f"k: {scalar}\n")) == {"k": expected}


@pytest.mark.parametrize("scalar", ["1:30", "0o17", "1e3", "1_000", "012", ".inf", "2024-01-01", "<<", "="])
def test_scalars_the_versions_read_differently_are_left_to_ruamel(tmp_path: Path, scalar: str) -> None:
    assert yamlio.load_plain(_doc(tmp_path, f"k: {scalar}\n")) is None


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\na: 2\n",  # PyYAML alone would keep the last
        "a: {b: 1, b: 2}\n",
        "1: a\n",
        "true: a\n",
        "? [a]\n: b\n",
        "a: &x 1\nb: *x\n",
        "a: !!str 1\n",
        "a: !custom x\n",
        "%YAML 1.1\n---\na: yes\n",
        "a: 1\n---\nb: 2\n",
        "a:\tb\n",
        "a: b\rc: d\n",
        "\ufeffa: b\n",
        "a: \x85b\n",
        "a: b\u2028c\n",
        "<<<<<<< ours\na: 1\n=======\na: 2\n>>>>>>> theirs\n",
        "a: [b\n",
        "",
    ],
)
def test_what_the_fast_reader_leaves_to_ruamel(tmp_path: Path, text: str) -> None:
    assert yamlio.load_plain(_doc(tmp_path, text)) is None


@pytest.mark.parametrize(
    "text",
    [
        'a: "tab\\tx\\u00e9\\x41\\U0001F600\\/\\N\\_\\L\\P\\e\\0 \\\\ \\""\n',
        'a: "folded\n  over \\\n  lines"\n',
        "a: 'it''s\n\n  two'\n",
        "a: plain\n  over lines\n\n  and a paragraph\n",
        "a: |\n  keep\n    more indented\n\n  x\n\nb: >-\n  fold\n  this\n\n    indented\n  back\n",
        "a: |+\n  keep trailing\n\n\nb: |2-\n    indented two\n",
        "a: x #comment\nb: 'x #quoted'\nc: x#y\n",
        "a:\r\n  - b\r\n  - c: d\r\n",
        "a: [b, {c: d}, [e]]\nb: {}\nc: []\nd:\ne: ''\n",
        "a: é ü 漢字 🙂\n",
    ],
)
def test_strings_read_alike(tmp_path: Path, text: str) -> None:
    assert _fast_agrees(_doc(tmp_path, text)) is not None


def test_every_yaml_file_of_the_repository_reads_alike(tmp_path: Path) -> None:
    files = [p for p in REPO.rglob("*.yaml") if ".venv" not in p.parts and ".git" not in p.parts]
    assert files
    read = [p for p in files if _fast_agrees(p) is not None]
    assert read  # the fast reader reads real files, not only the tests' snippets


def test_a_plan_the_tool_writes_takes_the_fast_path(tmp_path: Path) -> None:
    setup = make_workspace(tmp_path, phases=[phase("P1", scope={"allow": ["mod.py"]}), phase("P2")])
    path = setup.workspace / "runs" / setup.run_id / "plan.yaml"
    assert _fast_agrees(path) is not None


# --------------------------------------------------------------------------- plans


def _same_outcome(path: Path, categories: set[str] | None = CATEGORIES) -> Plan | None:
    """read_plan and load_plan give the same Plan, or the same error to the letter."""
    try:
        expected = load_plan(path, categories)[0]
    except AutopackError as exc:
        with pytest.raises(type(exc)) as info:
            read_plan(path, categories)
        assert (info.value.message, info.value.fix) == (exc.message, exc.fix)
        assert getattr(info.value, "problems", None) == getattr(exc, "problems", None)
        return None
    assert read_plan(path, categories) == expected
    return expected


def test_a_valid_plan_is_read_without_ruamel_or_jsonschema(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_plan(VALID)
    expected = load_plan(path, CATEGORIES)[0]

    def refused(*_args: object, **_kw: object) -> None:
        raise AssertionError("the slow path ran")

    monkeypatch.setattr(planfile, "load_plan", refused)
    monkeypatch.setattr(schemas, "schema_problems", refused)
    assert read_plan(path, CATEGORIES) == expected


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("name: Second", "name: no"),  # a YAML 1.1 boolean, a string to ruamel
        ("name: Second", "name: on"),
        ("phase_id: F1.2", "phase_id: 'no'"),
        ("phase_id: F1.2", "phase_id: on"),
        ("phase_id: F1.2", "phase_id: 1:30"),  # sexagesimal to YAML 1.1
        ("phase_id: F1.2", "phase_id: 0o17"),  # an int to YAML 1.2
        ("phase_id: F1.2", "phase_id: 1e3"),  # a float to YAML 1.2 only
        ("phase_id: F1.2", "phase_id: 1.10"),
        ("phase_id: F1.2", "phase_id: 2024-01-01"),
        ("name: Second", "name: Second\n        name: Again"),  # a duplicate key
        ("name: Second", "name: 1_000"),
        ("complexity: low", "complexity: hgh"),
        ("complexity: low", "complexity: yes"),
        ("complexity: low", "auto_apply: yes"),
        ("complexity: low", "auto_apply: true"),
        ("complexity: low", "max_builder_attempts: 3"),
        ("complexity: low", "max_builder_attempts: 3.0"),
        ("complexity: low", "max_builder_attempts: '3'"),
        ("complexity: low", "max_builder_attempts: 21"),
        ("complexity: low", "complexty: low"),
        ("complexity: low", "builder: {comand: x}"),
        ("complexity: low", "builder: {command: 1.5}"),
        ("complexity: low", "builder: claude"),
        ("complexity: low", "ci_profile: nrmal"),
        ("complexity: low", "tests: may_change\n        allows: [submodules]"),
        ("complexity: low", "allows: [lfs]"),
        ("phase_id: F1.2", "phase_id: f1.1"),
        ("phase_id: F1.2", "phase_id: 'a..b'"),
        ("phase_id: F1.2", 'phase_id: "F1.2\\n"'),
        ("task_category: tests", "task_category: test"),
        ("run_id: R", "run_id: other"),
        ("safety_profile: normal", "safety_profile: Normal"),
        ("repo: .  ", "repo: ~  "),
        ("  - tier_id: T2", "  - tier_id: T1"),
    ],
)
def test_fast_and_slow_paths_agree_on_plan_fixtures(workdir: Path, old: str, new: str) -> None:
    _same_outcome(write_plan(edited(old, new)))


def test_the_fixtures_of_the_plan_tests_agree(workdir: Path) -> None:
    """Every plan text in tests/test_plan_validation.py and the demo plans, both ways."""
    import test_plan_validation as tpv

    texts = [v for v in vars(tpv).values() if isinstance(v, str) and "tiers:" in v]
    assert VALID in texts
    for text in texts:
        _same_outcome(write_plan(text))
        _same_outcome(write_plan(text), None)
    for path in sorted((REPO / "pipeline" / "data").rglob("*.yaml")):
        if "tiers" in path.read_text(encoding="utf-8"):
            _same_outcome(path, None)


# --------------------------------------------------------------------------- validators

# Values a hostile or careless plan may hold where the model expects something else.
_HOSTILE: list[Any] = [
    *(None, True, False, 0, 1, -1, 21, 2**70, 0.5, 1.0, 3.0, -0.0, 1e308),
    *("", "x", "1", "true", "yes", "low", "LOW", "normal", "strict", "intact", "submodules"),
    *("F9", "bad id!", "a..b", "x.lock", "x.", "F1\n", "\nF1", "é", "a" * 64, "a" * 65, "-x"),
    *([], ["x"], [1], [None], {}, {"x": 1}, {"command": "x"}, {"normal": {}}, {"allow": ["x"]}),
    *({"repo": "x", "licence": "MIT"}, [{"name": "a", "run": "b"}]),
]


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*path, index))
    return out


def _mutated(base: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_paths(data)[1:])
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        move = rng.random()
        if move < 0.6:
            parent[last] = copy.deepcopy(rng.choice(_HOSTILE))
        elif move < 0.75 and isinstance(parent, dict):
            del parent[last]
        elif isinstance(parent, dict):
            parent[rng.choice(["extra", "Complexity", "scope", "ci", "reuse", "stack", *parent])] = copy.deepcopy(
                rng.choice(_HOSTILE)
            )
    return data


_RICH = {
    "run_id": "R",
    "project_id": "demo",
    "target": {"repo": ".", "base": "main"},
    "safety_profile": "safety_critical",
    "agents": {"builder": {"command": "x", "timeout_s": 5, "max_cost_usd": 1.5, "args": ["-v"]}, "auditor": "claude"},
    "ci": {"normal": {"steps": [{"name": "t", "run": "true", "timeout_s": 9}], "preflight_attempts": 2}},
    "budgets": {"token_cap": 10, "cost_cap_usd": 2.5},
    "stack": {"profile": "p", "project_type": "cli", "budget_modifier": -0.5, "components": {"a": "b"}},
    "chained_from": "Q",
    "tiers": [
        {
            "tier_id": "T1",
            "name": "Core",
            "phases": [
                {
                    "phase_id": "F1",
                    "name": "First",
                    "task_category": "tests",
                    "complexity": "low",
                    "builder_mode": None,
                    "scope": {"allow": ["src/**"], "deny": []},
                    "ci_profile": "strict",
                    "auto_apply": False,
                    "max_builder_attempts": 3,
                    "incident_token_cap": 100,
                    "cleans": ["k"],
                    "tests": "may_change",
                    "allows": ["filters"],
                    "reuse": {
                        "feature": "f",
                        "decision": "greenfield",
                        "match": 0.5,
                        "source": {"repo": "r", "licence": "MIT", "quality_score": 1},
                    },
                }
            ],
        }
    ],
}


def test_strict_pydantic_accepts_nothing_the_json_schema_refuses() -> None:
    """Seeded random damage to a plan that uses every field: whenever the fast path's
    validator accepts, jsonschema and the lax model accept too, with the same Plan."""
    assert planfile._strictly_valid(copy.deepcopy(_RICH))
    rng = random.Random(15)
    schema = plan_schema()
    accepted = refused = 0
    for _ in range(10000):
        data = _mutated(_RICH, rng)
        if planfile._strictly_valid(data):
            accepted += 1
            assert schemas.schema_problems(data, schema) == [], data
            assert Plan.model_validate(data) == Plan.model_validate_json(json.dumps(data), strict=True)
        else:
            refused += 1
    assert accepted > 100 and refused > 1000, (accepted, refused)  # both sides exercised


def test_a_bad_plan_still_gets_every_located_problem(workdir: Path) -> None:
    path = write_plan(edited("complexity: low", "complexity: hgh\n        auto_apply: yes"))
    with pytest.raises(ValidationErrors) as info:
        read_plan(path, CATEGORIES)
    assert info.value.problems == [
        "runs/R/plan.yaml:19:9: $.tiers[0].phases[1].complexity: 'hgh' is not one of ['low', 'medium', 'high']",
        "runs/R/plan.yaml:20:9: $.tiers[0].phases[1].auto_apply: YAML 1.1 boolean 'yes' is a string here; "
        "write true or false",
    ]
