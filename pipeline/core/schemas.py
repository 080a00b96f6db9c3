"""JSON Schema validation with errors a person can act on (docs/architecture.md, Invariants).

Every artifact has a JSON Schema 2020-12 file in `schemas/`, generated from its pydantic
model (`write_schemas`, the `doit schemas` task) and committed; `check_schemas` notices a
model changed without regenerating. `validate_instance` turns jsonschema's errors into
`file:line:col: $.json.path: message` lines:

- for `anyOf`/`oneOf` (pydantic's optional fields and unions) the error of the branch the
  value was meant for is reported, not "is not valid under any of the given schemas";
- an unknown key is reported at the key, with a did-you-mean;
- with the source text of a YAML scalar, type errors explain YAML's typing: `1.10` read
  as the number 1.1, the YAML 1.1 boolean `yes` read as a string.

jsonschema is imported inside the functions: starting a task that validates nothing stays
fast. When it is imported, the optional format-checker libraries that take long to load
are kept out (`_jsonschema`): no schema here uses `format`, and rfc3987-syntax alone
compiles ~40 Lark grammars at import (1-2 s in every validating task).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline.core.jsonio import canonical_json, json_path
from pipeline.models.base import ID_PATTERN

JsonPath = tuple[str | int, ...]
Positions = Callable[[JsonPath], tuple[int, int] | None]
ScalarText = Callable[[JsonPath], str | None]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID_BASE = "https://autopack.dev/schemas/"
REGENERATE = "run `doit schemas` and commit the result"

# file stem in schemas/ -> the model it is generated from, as module:class: a command that
# needs one schema imports one model, not all of them (`schema_models()` imports them all)
_SCHEMA_MODELS: dict[str, str] = {
    "plan": "pipeline.models.plan:Plan",
    "ruleset": "pipeline.models.ruleset:Ruleset",
    "strategy": "pipeline.models.strategy:Strategy",
    "run": "pipeline.models.run:RunRecord",
    "phase": "pipeline.models.run:PhaseRecord",
    "phase_issues": "pipeline.models.issues:PhaseIssueFile",
    "run_issue_index": "pipeline.models.issues:RunIssueIndex",
    "project_backlog": "pipeline.models.issues:ProjectBacklog",
    "builder_result": "pipeline.models.results:BuilderResult",
    "auditor_result": "pipeline.models.results:AuditorResult",
    "attempt": "pipeline.models.results:AttemptRecord",
    "gate": "pipeline.models.reports:GateReport",
    "ci": "pipeline.models.reports:CiReport",
    "event": "pipeline.models.events:Event",
    "stacks": "pipeline.models.catalog:StackProfiles",
    "catalog": "pipeline.models.catalog:Catalog",
    "catalog_candidate": "pipeline.models.catalog:CandidateReport",
}


@functools.cache
def schema_models() -> dict[str, type[BaseModel]]:
    """File stem in schemas/ -> the model it is generated from (imports every model)."""
    models = {}
    for name, ref in _SCHEMA_MODELS.items():
        module, cls = ref.split(":")
        models[name] = getattr(importlib.import_module(module), cls)
    return models

# Patterns whose regex means nothing to the person who broke it.
_PATTERN_HINTS = {
    ID_PATTERN: "is not a valid id: use letters, digits, '.', '_', '-' (max 64), "
    "starting with a letter or digit",
}

# Optional libraries jsonschema's format checkers import when installed (e.g. by the
# `format-nongpl` extra), skipped for their import time: rfc3987_syntax (~40 Lark
# grammars compiled at import: 1-2 s), isoduration (imports arrow: ~0.1 s).
_SLOW_FORMAT_MODULES = ("rfc3987_syntax", "isoduration")

# YAML 1.1 booleans: strings under YAML 1.2 (kept here, not imported: validate is YAML-free)
_YAML11_BOOLEANS = frozenset({"y", "n", "yes", "no", "on", "off"})


@dataclass(frozen=True)
class Problem:
    """One validation problem: where (a JSON path) and what.

    `keyword` is the JSON Schema keyword that failed ("enum", "minItems", ...) so a caller
    can reword a message for its own file; "" for problems that are not schema errors.
    """

    path: JsonPath
    message: str
    keyword: str = ""


# --------------------------------------------------------------------------- formatting


def format_problem(source: str, problem: Problem, positions: Positions | None = None) -> str:
    """`source:LINE:COL: $.path: message` (LINE:COL left out when unknown)."""
    pos = positions(problem.path) if positions else None
    where = f"{source}:{pos[0]}:{pos[1]}" if pos else source
    return f"{where}: {json_path(problem.path)}: {problem.message}"


def sort_problems(problems: Iterable[Problem], positions: Positions | None) -> list[Problem]:
    """In file order (by line, column); problems without a position last, in given order."""
    far = (1 << 62, 0)

    def key(problem: Problem) -> tuple[int, int]:
        return (positions(problem.path) if positions else None) or far

    return sorted(problems, key=key)


def validate_instance(
    instance: Any,
    schema: dict[str, Any],
    *,
    source: str,
    positions: Positions | None = None,
    scalar_text: ScalarText | None = None,
) -> list[str]:
    """Every schema problem of `instance` as a `source:LINE:COL: $.path: message` line.

    `positions` maps a JSON path to the 1-based (line, col) of its key; `scalar_text` to
    the scalar's source text (YAML files), which lets a type error say how to quote it.
    An empty list means valid.
    """
    problems = schema_problems(instance, schema, scalar_text=scalar_text)
    return [format_problem(source, p, positions) for p in sort_problems(problems, positions)]


# --------------------------------------------------------------------------- schema errors


def schema_problems(
    instance: Any, schema: dict[str, Any], *, scalar_text: ScalarText | None = None
) -> list[Problem]:
    """The schema problems of `instance`, one per distinct (path, message)."""
    jsonschema = _jsonschema()
    # The checkers of the formats whose libraries are available (none of ours uses one).
    checker = jsonschema.FormatChecker()
    validator = jsonschema.Draft202012Validator(schema, format_checker=checker)
    seen: set[tuple[JsonPath, str]] = set()
    out: list[Problem] = []
    for error in validator.iter_errors(instance):
        for problem in _problems(error, scalar_text):
            if (problem.path, problem.message) not in seen:
                seen.add((problem.path, problem.message))
                out.append(problem)
    return out


def _jsonschema() -> Any:
    """The jsonschema package, imported without the format libraries that are slow to load.

    They are hidden from this one import (`sys.modules[name] = None` makes `import name`
    fail, which jsonschema takes as "not installed") and visible again afterwards.
    """
    if "jsonschema" in sys.modules:
        return sys.modules["jsonschema"]
    hidden = [name for name in _SLOW_FORMAT_MODULES if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import jsonschema
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return jsonschema


def _path(error: Any) -> JsonPath:
    return tuple(error.absolute_path)


def _problems(error: Any, scalar_text: ScalarText | None) -> Iterator[Problem]:
    """The useful problem(s) behind one jsonschema error."""
    if error.validator in ("anyOf", "oneOf") and error.context:
        yield from _union_problems(error, scalar_text)
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        yield from _unknown_keys(error)
    elif "propertyNames" in error.relative_schema_path:
        yield _bad_key(error)
    elif error.validator == "type":
        yield _type_problem(error, _expected_types(error.validator_value), scalar_text)
    elif error.validator == "pattern" and error.validator_value in _PATTERN_HINTS:
        message = f"{error.instance!r} {_PATTERN_HINTS[error.validator_value]}"
        yield Problem(_path(error), message, "pattern")
    else:
        yield Problem(_path(error), error.message, str(error.validator))


def _union_problems(error: Any, scalar_text: ScalarText | None) -> Iterator[Problem]:
    """For a failed anyOf/oneOf, the errors of the branch the value was meant for.

    A branch whose type the value does not have is not the one meant (`'hgh'` under
    `Complexity | None` is meant for the enum, not for null). With one such branch left,
    its errors are the answer; with several, jsonschema's best_match picks one; with none,
    the value has the wrong type and the message lists the types allowed.
    """
    from jsonschema.exceptions import best_match

    branches: dict[int, list[Any]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    meant = [errs for errs in branches.values() if not any(_wrong_type(e) for e in errs)]
    if len(meant) == 1:
        for sub in meant[0]:
            yield from _problems(sub, scalar_text)
    elif meant:
        yield from _problems(best_match(e for errs in meant for e in errs), scalar_text)
    else:
        expected: list[str] = []
        for errs in branches.values():
            for sub in errs:
                if _wrong_type(sub):
                    types = _expected_types(sub.validator_value)
                    expected += [t for t in types if t not in expected]
        yield _type_problem(error, expected, scalar_text)


def _wrong_type(error: Any) -> bool:
    """A type error on the branch's value itself (not on something inside it)."""
    return bool(error.validator == "type" and not error.relative_path)


def _expected_types(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _type_problem(error: Any, expected: list[str], scalar_text: ScalarText | None) -> Problem:
    """A wrong type, worded for what YAML did to the text when we know the text."""
    path = _path(error)
    value = error.instance
    text = scalar_text(path) if scalar_text else None
    if text is not None and not text.startswith(("'", '"')):
        if isinstance(value, bool | int | float) and "string" in expected:
            kind = "the boolean" if isinstance(value, bool) else "the number"
            read = json.dumps(value)
            return Problem(
                path, f"{text} was read as {kind} {read}; quote it: {_quote(text)}", "type"
            )
        if isinstance(value, str) and value.lower() in _YAML11_BOOLEANS and "boolean" in expected:
            message = f"YAML 1.1 boolean '{text}' is a string here; write true or false"
            return Problem(path, message, "type")
    return Problem(path, _wrong_type_message(value, expected), "type")


def _wrong_type_message(value: Any, expected: list[str]) -> str:
    types = _types_text(expected)
    if value is None:
        return f"empty value (read as null), expected {types}"
    if isinstance(value, dict | list):
        # the whole collection would swamp the message; its position says which one
        return f"expected {types}, found a {'mapping' if isinstance(value, dict) else 'list'}"
    if isinstance(value, str):
        return f"{value!r} is not of type {types}"
    return f"{json.dumps(value)} is not of type {types}"  # true, not Python's True


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _types_text(expected: list[str]) -> str:
    """`'string'`, `'string' or 'object'`; null is left out when it is only "optional"."""
    shown = [t for t in expected if t != "null"] or expected
    quoted = [repr(t) for t in shown]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _unknown_keys(error: Any) -> Iterator[Problem]:
    """One problem per unknown key, placed at the key, with a did-you-mean."""
    known = list(error.schema.get("properties", {}))
    path = _path(error)
    for key in error.instance:
        if key not in known:
            yield Problem(
                (*path, key),
                f"unknown key {key!r}{_did_you_mean(key, known)}",
                "additionalProperties",
            )


def _bad_key(error: Any) -> Problem:
    """A key rejected by propertyNames (e.g. a CI profile name), placed at the key."""
    key = error.instance
    allowed = error.validator_value if error.validator == "enum" else []
    message = f"key {key!r} is not allowed"
    if allowed:
        message = f"key {key!r} is not one of {allowed}{_did_you_mean(str(key), list(allowed))}"
    return Problem((*_path(error), key), message, "propertyNames")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest of `choices`, or ""."""
    return _did_you_mean(word, list(choices))


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------- schema files


def schema_for(model_cls: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema with the 2020-12 dialect and its `$id` in schemas/."""
    ref = f"{model_cls.__module__}:{model_cls.__qualname__}"
    name = next((n for n, r in _SCHEMA_MODELS.items() if r == ref), model_cls.__name__.lower())
    schema = model_cls.model_json_schema()
    return {"$schema": SCHEMA_DIALECT, "$id": f"{SCHEMA_ID_BASE}{name}.schema.json", **schema}


def _schema_text(name: str) -> str:
    return canonical_json(schema_for(schema_models()[name]))


def write_schemas(directory: Path) -> list[Path]:
    """Write `<name>.schema.json` for every model into `directory`; return the changed files.

    A stale `*.schema.json` of ours (its `$id` under SCHEMA_ID_BASE) whose model is gone is
    deleted, so the directory is exactly what the models say.
    """
    from pipeline.core.jsonio import write_text_atomic

    directory = Path(directory)
    changed = [
        path
        for name in _SCHEMA_MODELS
        if write_text_atomic(path := directory / f"{name}.schema.json", _schema_text(name))
    ]
    for path in _stale_files(directory):
        path.unlink()
        changed.append(path)
    return changed


def check_schemas(directory: Path) -> list[str]:
    """What differs between `directory` and the models: missing, drifted or stale files."""
    directory = Path(directory)
    problems = []
    for name, model in schema_models().items():
        path = directory / f"{name}.schema.json"
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(f"{path}: missing (the schema of {model.__name__}); {REGENERATE}")
            continue
        if current != _schema_text(name):
            problems.append(f"{path}: differs from the model {model.__name__}; {REGENERATE}")
    for path in _stale_files(directory):
        problems.append(f"{path}: no model generates it any more; {REGENERATE}")
    return problems


def _stale_files(directory: Path) -> list[Path]:
    """Our schema files (by `$id`) that no model in schema_models() generates."""
    stale = []
    for path in sorted(directory.glob("*.schema.json")):
        if path.name.removesuffix(".schema.json") in _SCHEMA_MODELS:
            continue
        try:
            schema_id = json.loads(path.read_text(encoding="utf-8")).get("$id", "")
        except (ValueError, AttributeError, OSError):
            continue  # not ours to judge or delete
        if isinstance(schema_id, str) and schema_id.startswith(SCHEMA_ID_BASE):
            stale.append(path)
    return stale
