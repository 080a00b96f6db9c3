"""The gate's test-tampering check: a patch that deletes, skips or weakens tests.
"""

from __future__ import annotations

import posixpath
import re
from typing import TYPE_CHECKING

from pipeline.gate.evidence import gate_check
from pipeline.gate.patch import FileChange, ParsedPatch
from pipeline.models.reports import GateCheck

if TYPE_CHECKING:  # both cost tens of ms to import; a task that never gates skips them
    pass


# Categories whose job is the tests themselves: deleting or skipping tests is their work.
TEST_CATEGORIES = frozenset({"tests", "test_maintenance"})


_SKIP_MARKER = re.compile(
    r"""pytest\.mark\.(?:skip|skipif|xfail)\b
    |pytest\.(?:skip|xfail|importorskip)\s*\(
    |\bunittest\.skip|\bSkipTest\b
    |\bxfail\b
    |\b(?:it|describe|test|context)\.skip\b
    |\b(?:it|describe|test|context)\.only\s*\(
    |\bx(?:it|describe|test)\s*\(
    |\bt\.Skip(?:Now|f)?\s*\(
    |\bcollect_ignore\b|--deselect\b""",
    re.VERBOSE,
)


_ASSERT_LINE = re.compile(
    r"""^\s*(?:assert\b|self\.assert\w*\s*\(|(?:await\s+)?expect\s*\(|assert_\w*\s*\(
    |\w+\.assert\w*\s*\()""",
    re.VERBOSE,
)


_COMMENT = re.compile(r"^\s*(?:#|//)")


def is_test_file(path: str) -> bool:
    """A test by the usual conventions (tests/ directories, test_*.py, *.spec.* ...)."""
    parts = path.split("/")
    name = parts[-1]
    if any(part in ("tests", "test", "__tests__") for part in parts[:-1]):
        return True
    return (
        (name.startswith("test_") and name.endswith(".py"))
        or re.search(r"_test\.(?:py|go)$", name) is not None
        or re.search(r"\.(?:spec|test)\.[^.]+$", name) is not None
    )


def check_test_tampering(patch: ParsedPatch, task_category: str, may_change: str | None = None) -> GateCheck:
    """Tests are not deleted, skipped or stripped of asserts, unless the phase may change
    them: `may_change` says why (the plan's `tests: may_change`, the category, an auditor's
    approval with its reason), and the changes found are the check's evidence."""
    if may_change is None and task_category in TEST_CATEGORIES:
        may_change = f"category {task_category!r}"
    found: list[str] = []
    for fc in patch.files:
        found.extend(_tampering_in(fc))
    if may_change is not None:
        shown = f"{len(found)} change(s) to tests recorded" if found else "tests are left intact"
        return gate_check("test_tampering", True, f"tests may change ({may_change}): {shown}", found)
    if found:
        message = "the patch deletes, skips or weakens tests; fix the code, not the tests"
        return gate_check("test_tampering", False, message, found)
    return gate_check("test_tampering", True, "tests are left intact")


# pytest's configuration: options that deselect or hide tests from every run.
_PYTEST_CONFIG = frozenset({"pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini", "conftest.py"})
_DESELECT = re.compile(
    r"""--deselect\b|(?<![\w-])-k\b|--ignore(?:-glob)?\b|(?<![\w-])-m\b|\bcollect_ignore\w*
    |\bnorecursedirs\b|\bpython_(?:files|classes|functions)\b|\btestpaths\b|-p\s*no:""",
    re.VERBOSE,
)


def _config_tampering(fc: FileChange) -> list[str]:
    """Tests deselected through pytest's configuration (addopts, collect_ignore, ...)."""
    if posixpath.basename(fc.path) not in _PYTEST_CONFIG:
        return []
    return [
        f"{fc.path}:{line.number}: changes which tests run `{match.group(0).strip()}`"
        for line in fc.added_lines
        if not _COMMENT.match(line.text) and (match := _DESELECT.search(line.text))
    ]


def _tampering_in(fc: FileChange) -> list[str]:
    config = _config_tampering(fc)
    if config:
        return config
    was_test = is_test_file(fc.old_path or fc.path)
    if fc.status == "deleted" and is_test_file(fc.path):
        return [f"{fc.path}: test file deleted"]
    if fc.status == "renamed" and was_test and not is_test_file(fc.path):
        return [f"{fc.old_path}: test file renamed away to {fc.path}"]
    if not (is_test_file(fc.path) or posixpath.basename(fc.path) == "conftest.py"):
        return []
    found = [
        f"{fc.path}:{line.number}: adds skip marker `{match.group(0).strip()}`"
        for line in fc.added_lines
        if not _COMMENT.match(line.text) and (match := _SKIP_MARKER.search(line.text))
    ]
    if fc.status in ("modified", "renamed"):
        removed = sum(1 for line in fc.removed_lines if _ASSERT_LINE.match(line.text))
        added = sum(1 for line in fc.added_lines if _ASSERT_LINE.match(line.text))
        if removed and not added:
            found.append(f"{fc.path}: removes {removed} assert line(s) and adds none")
    return found
