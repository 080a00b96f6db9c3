"""The gate's behavioural tamper check: Python tests compared as code, before and after.

The textual check (`pipeline.gate.tampering`) sees lines; this one parses each Python test
file the patch touches as it was before the patch and as it is after it is applied, and
compares every test function that existed before:

- gone (the file stays): removed;
- a new skip/xfail decorator, or a module-level `pytestmark` skip;
- an early exit before it tests anything: a `return`, a `raise`, or a call to a skip
  function (`pytest.skip`, `self.skipTest`, or any alias: `from pytest import skip as s`);
- fewer asserts than before, or an assert whose condition became a constant
  (`assert True`, `assert 1 == 1`, `assert x or True`, `self.assertTrue(True)`).

A file that no longer parses is left to the static checks and CI. A phase that may change
its tests (the plan's `tests: may_change`, the `tests`/`test_maintenance` categories, an
auditor's approval) may do all of this, as for the textual check.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.gate.evidence import gate_check
from pipeline.gate.patch import ParsedPatch
from pipeline.gate.tampering import TEST_CATEGORIES, is_test_file
from pipeline.models.reports import GateCheck

_SKIPPERS = frozenset({"skip", "xfail", "importorskip", "skipTest", "SkipTest", "fail"})
_SKIP_MARKS = frozenset({"skip", "skipif", "xfail"})
_ASSERT_METHODS = frozenset({"assertTrue", "assertEqual", "assertIn", "assertIs", "assertIsNotNone", "assert_"})
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], object]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
}
_MAX_TEXT = 2_000_000  # a larger "test file" is not parsed (the static checks see it)


def before_texts(patch: ParsedPatch, worktree: Path) -> dict[str, str | None]:
    """The Python test files the patch changes, as they are before it is applied."""
    out: dict[str, str | None] = {}
    for fc in patch.files:
        old = fc.old_path or fc.path
        if fc.status in ("added",) or not old.endswith(".py") or not is_test_file(old):
            continue
        out[old] = _read(worktree / old)
    return out


def check_test_behaviour(
    patch: ParsedPatch,
    before: dict[str, str | None],
    worktree: Path,
    task_category: str,
    may_change: str | None = None,
) -> GateCheck:
    """Existing tests test no less after the patch, unless the phase may change them
    (`may_change` says why, as for the textual check)."""
    if may_change is None and task_category in TEST_CATEGORIES:
        may_change = f"category {task_category!r}"
    if may_change is not None:
        return gate_check("test_behaviour", True, f"tests may change ({may_change})")
    renamed = {fc.old_path: fc.path for fc in patch.files if fc.old_path and fc.status != "deleted"}
    found: list[str] = []
    for old, text in sorted(before.items()):
        if text is None:
            continue
        new_path = renamed.get(old, old)
        after = _read(worktree / new_path)
        if after is None:
            continue  # deleted: the textual check names it
        found += _compare(new_path, text, after)
    if found:
        message = "the patch makes existing tests test less; fix the code, not the tests"
        return gate_check("test_behaviour", False, message, found)
    return gate_check("test_behaviour", True, f"{len(before)} test file(s) compared before and after")


def _read(path: Path) -> str | None:
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > _MAX_TEXT:
            return None
        return path.read_text(errors="replace")
    except OSError:
        return None


def _compare(path: str, before: str, after: str) -> list[str]:
    try:
        old_tree, new_tree = ast.parse(before), ast.parse(after)
    except (SyntaxError, ValueError):
        return []
    old_tests, new_tests = dict(_tests(old_tree)), dict(_tests(new_tree))
    skippers = _skip_aliases(new_tree)
    found = []
    if _module_skipped(new_tree, skippers) and not _module_skipped(old_tree, _skip_aliases(old_tree)):
        found.append(f"{path}: the whole module is skipped now")
    for name, old in old_tests.items():
        new = new_tests.get(name)
        if new is None:
            found.append(f"{path}::{name}: removed")
            continue
        found += [f"{path}::{name}: {why}" for why in _weakened(old, new, _skip_aliases(old_tree), skippers)]
    return found


def _tests(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name.startswith("test"):
                    yield f"{node.name}::{item.name}", item


def _weakened(
    old: ast.FunctionDef | ast.AsyncFunctionDef,
    new: ast.FunctionDef | ast.AsyncFunctionDef,
    old_skippers: frozenset[str],
    new_skippers: frozenset[str],
) -> list[str]:
    found = []
    if _marked(new) and not _marked(old):
        found.append("marked skip/xfail")
    if _early_exit(new, new_skippers) and not _early_exit(old, old_skippers):
        found.append("exits before testing anything (return, raise or skip first)")
    if _skip_calls(new, new_skippers) > _skip_calls(old, old_skippers):
        found.append("calls a skip/xfail function it did not call before")
    old_asserts, new_asserts = _asserts(old), _asserts(new)
    if len(new_asserts) < len(old_asserts):
        found.append(f"has {len(new_asserts)} assert(s), {len(old_asserts)} before")
    if sum(map(_always_true, new_asserts)) > sum(map(_always_true, old_asserts)):
        found.append("asserts a constant condition")
    return found


def _skip_aliases(tree: ast.Module) -> frozenset[str]:
    """Local names bound to skip functions (`from pytest import skip as s`)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names if a.name in _SKIPPERS}
    return frozenset(names)


def _is_skip_call(node: ast.AST, skippers: frozenset[str]) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr in _SKIPPERS) or (
        isinstance(func, ast.Name) and func.id in skippers
    )


def _skip_calls(fn: ast.AST, skippers: frozenset[str]) -> int:
    return sum(1 for node in ast.walk(fn) if _is_skip_call(node, skippers))


def _marked(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(_mark_name(d) in _SKIP_MARKS for d in fn.decorator_list)


def _mark_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


def _module_skipped(tree: ast.Module, skippers: frozenset[str]) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            values = node.value.elts if isinstance(node.value, ast.List | ast.Tuple) else [node.value]
            if any(_mark_name(v) in _SKIP_MARKS for v in values):
                return True
        if isinstance(node, ast.Expr) and _is_skip_call(node.value, skippers):
            return True
    return False


def _early_exit(fn: ast.FunctionDef | ast.AsyncFunctionDef, skippers: frozenset[str]) -> bool:
    body = list(fn.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    if not body:
        return False
    first = body[0]
    if isinstance(first, ast.Return | ast.Raise):
        return True
    if isinstance(first, ast.If) and _constant_truth(first.test) is True and first.body:
        return isinstance(first.body[0], ast.Return | ast.Raise)
    return isinstance(first, ast.Expr) and _is_skip_call(first.value, skippers)


def _asserts(fn: ast.AST) -> list[ast.expr]:
    """The condition of every assert (statement or unittest method) in `fn`."""
    found: list[ast.expr] = []
    for node in ast.walk(fn):
        if isinstance(node, ast.Assert):
            found.append(node.test)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr.startswith("assert")
            and node.args
        ):
            found.append(node.args[0] if node.func.attr in _ASSERT_METHODS and len(node.args) == 1 else node)
    return found


def _always_true(test: ast.expr) -> bool:
    return _constant_truth(test) is True


def _constant_truth(node: ast.expr) -> bool | None:
    """The truth of an expression made only of constants; None when it depends on anything."""
    if isinstance(node, ast.Constant):
        return bool(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _constant_truth(node.operand)
        return None if inner is None else not inner
    if isinstance(node, ast.BoolOp):
        values = [_constant_truth(v) for v in node.values]
        if isinstance(node.op, ast.Or) and any(v is True for v in values):
            return True
        if isinstance(node.op, ast.And) and all(v is True for v in values):
            return True
        return None
    if isinstance(node, ast.Compare) and all(isinstance(n, ast.Constant) for n in (node.left, *node.comparators)):
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            compare = _COMPARE.get(type(op))
            try:
                if compare is None or not compare(left.value, right.value):  # type: ignore[attr-defined]
                    return None if compare is None else False
            except TypeError:  # `1 < "a"`: not a constant truth
                return None
            left = right
        return True
    return None
    return None
