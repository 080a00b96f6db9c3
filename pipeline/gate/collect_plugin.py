"""The pytest plugin the gate's collection check loads (`-p autopack_collect_plugin`).

Never imported by Autopack itself: `pipeline.gate.collection` copies this file into a
directory the step cannot write, puts that directory on PYTHONPATH and runs the phase's
pytest command with `--collect-only -p autopack_collect_plugin`. It writes one JSON file
(`AUTOPACK_COLLECT_OUT`) when collection is over:

- `tests`: every collected node id -> "run", "skip" or "xfail", with skip/skipif and
  xfail markers evaluated as pytest evaluates them (and unittest's skip decorators);
- `deselected`: the node ids a hook or an option deselected (`pytest_deselected`);
- `errors`: the collectors that failed, with the last line of their report.

It runs inside the candidate's own test process: a conftest written to forge this file
can, so the gate treats the file as hostile (bounded, validated) and keeps its AST checks.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

_FORMAT = 1
_state: dict[str, Any] = {"deselected": [], "errors": []}


def pytest_deselected(items: list[pytest.Item]) -> None:
    _state["deselected"].extend(item.nodeid for item in items)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        text = str(report.longrepr).strip().splitlines()
        _state["errors"].append(f"{report.nodeid or '<session>'}: {text[-1] if text else 'collection failed'}"[:500])


def _how(item: pytest.Item) -> str:
    try:
        from _pytest.skipping import evaluate_skip_marks, evaluate_xfail_marks

        if evaluate_skip_marks(item) is not None:
            return "skip"
        xfail = evaluate_xfail_marks(item)
        if xfail is not None:
            return "xfail"
    except Exception:  # a condition that raises is still a skip marker that stands there
        if any(True for _ in item.iter_markers("skip")) or any(True for _ in item.iter_markers("skipif")):
            return "skip"
        if any(True for _ in item.iter_markers("xfail")):
            return "xfail"
    obj = getattr(item, "obj", None)
    parent = getattr(getattr(item, "parent", None), "obj", None)
    if getattr(obj, "__unittest_skip__", False) or getattr(parent, "__unittest_skip__", False):
        return "skip"
    return "run"


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    out = os.environ.get("AUTOPACK_COLLECT_OUT")
    if not out:
        return
    data = {
        "format": _FORMAT,
        "tests": {item.nodeid: _how(item) for item in session.items},
        "deselected": sorted(set(_state["deselected"])),
        "errors": list(_state["errors"]),
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True)
