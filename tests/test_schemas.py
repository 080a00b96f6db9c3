"""The committed schemas/ files are exactly what the models generate (docs/architecture.md: Invariants, Code map)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.core.schemas import (
    SCHEMA_DIALECT,
    check_schemas,
    schema_for,
    schema_models,
    validate_instance,
    write_schemas,
)
from pipeline.models.plan import Plan

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def test_committed_schemas_match_the_models() -> None:
    problems = check_schemas(SCHEMAS)
    assert not problems, "schemas/ is out of date; run `doit schemas`:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", sorted(schema_models()))
def test_each_schema_has_id_and_dialect(name: str) -> None:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == SCHEMA_DIALECT == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://autopack.dev/schemas/{name}.schema.json"


def test_every_schema_is_a_valid_2020_12_schema() -> None:
    from jsonschema import Draft202012Validator

    for name in schema_models():
        Draft202012Validator.check_schema(json.loads((SCHEMAS / f"{name}.schema.json").read_text()))


def test_check_schemas_reports_an_edited_file(tmp_path: Path) -> None:
    written = write_schemas(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{n}.schema.json" for n in schema_models())
    assert check_schemas(tmp_path) == []
    assert write_schemas(tmp_path) == []  # unchanged files are not rewritten

    plan = tmp_path / "plan.schema.json"
    plan.write_text(plan.read_text().replace('"minItems": 1', '"minItems": 2'), encoding="utf-8")
    assert check_schemas(tmp_path) == [
        f"{plan}: differs from the model Plan; run `doit schemas` and commit the result"
    ]
    assert write_schemas(tmp_path) == [plan]
    assert check_schemas(tmp_path) == []


def test_check_schemas_reports_missing_and_stale_files(tmp_path: Path) -> None:
    shutil.copytree(SCHEMAS, tmp_path, dirs_exist_ok=True)
    (tmp_path / "gate.schema.json").unlink()
    stale = tmp_path / "old.schema.json"
    stale.write_text(json.dumps({"$id": "https://autopack.dev/schemas/old.schema.json"}))
    foreign = tmp_path / "theirs.schema.json"
    foreign.write_text(json.dumps({"$id": "https://example.org/theirs.schema.json"}))
    assert check_schemas(tmp_path) == [
        f"{tmp_path / 'gate.schema.json'}: missing (the schema of GateReport); "
        "run `doit schemas` and commit the result",
        f"{stale}: no model generates it any more; run `doit schemas` and commit the result",
    ]
    write_schemas(tmp_path)
    assert check_schemas(tmp_path) == []
    assert not stale.exists() and foreign.exists()  # only our own files are deleted


def test_schema_for_names_the_file() -> None:
    schema = schema_for(Plan)
    assert schema["$id"] == "https://autopack.dev/schemas/plan.schema.json"
    assert schema["title"] == "Plan"


def test_validate_instance_without_positions() -> None:
    # a JSON artifact: no line/column, and no YAML-specific wording
    problems = validate_instance(
        {"run_id": "r", "project_id": "p", "tiers": [], "budgets": {"token_cap": True}},
        schema_for(Plan),
        source="run.json",
    )
    assert problems == [
        "run.json: $.budgets.token_cap: true is not of type 'integer'",
        "run.json: $.tiers: [] should be non-empty",
    ]
