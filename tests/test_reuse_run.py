"""A bootstrapped plan (`new_run --project-type --features`) run end to end with scripted
agents, and reuse phases stopped by the gate's licence checks (docs/architecture.md, Reuse)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.commands.validate import validate_run
from pipeline.core import yamlio
from pipeline.plan.generate import new_run
from pipeline.run.driver import run_phase, run_to_end
from testing.gitrepo import make_repo
from testing.runs import RunSetup, command, python_step, write_agent

RUN = "api"
FEATURES = "auth_basic,rate_limiting,rest_api_crud"
MIT_HEADER = (
    "# Copyright (c) 2019 The fastapi-users authors\\n"
    "# SPDX-License-Identifier: MIT\\n"
)
GPL_HEADER = (
    "# This program is free software: you can redistribute it and/or modify it under\\n"
    "# the terms of the GNU General Public License as published by the Free Software\\n"
    "# Foundation, either version 3 of the License, or (at your option) any later version.\\n"
)
SLOWAPI_NOTICE = "slowapi: https://github.com/laurentS/slowapi, commit 5e3f1a9, licence MIT\\n"
BUILDER = f"""
if PHASE == "F1.1":
    write("app/auth.py", "{MIT_HEADER}def login(user, password):\\n    return user\\n")
elif PHASE == "F1.2":
    write("app/limits.py", "def limit(key):\\n    return key\\n")
    write("THIRD_PARTY_NOTICES.md", "{SLOWAPI_NOTICE}")
elif PHASE == "F1.3":
    write("app/wiring.py", "from app.auth import login\\nfrom app.limits import limit\\n")
else:
    write("app/crud.py", "ITEMS = {{}}\\n")
result(usage={{"tokens_in": 1000, "tokens_out": 500}})
"""
AUDITOR = """
purpose = os.environ.get("AUTOPACK_AUDIT_PURPOSE")
result(verdict="approve" if purpose == "review" else "reject", notes=f"scripted {purpose}")
"""
# CI: every module under app/ parses (no bytecode left in the worktree)
PARSE_APP = "import ast, pathlib; [ast.parse(p.read_text()) for p in pathlib.Path('app').rglob('*.py')]"
CI = [python_step("parse", PARSE_APP)]


def bootstrapped(tmp_path: Path, builder: str = BUILDER, files: dict[str, str] | None = None) -> RunSetup:
    """A workspace whose plan is `new_run`'s, with the agents, target and CI edited in by
    hand (as a person would before start_run), and the run started."""
    repo = make_repo(tmp_path / "repo", {"app/__init__.py": "", "README.md": "shop\n", **(files or {})})
    ws = tmp_path / "workspace"
    ws.mkdir()
    path = new_run(ws, RUN, project_type="api_service", features=FEATURES)
    agents = {
        "builder": {"command": command(write_agent(tmp_path / "agents" / "builder.py", builder))},
        "auditor": {"command": command(write_agent(tmp_path / "agents" / "auditor.py", AUDITOR))},
    }
    rt = yamlio.load_roundtrip(path)
    yamlio.set_value(rt, ("target",), {"repo": str(repo), "base": "main"})
    yamlio.set_value(rt, ("agents",), agents)
    yamlio.set_value(rt, ("ci",), {"normal": {"steps": CI, "preflight_attempts": 1}})
    yamlio.dump_roundtrip(rt, path)
    assert validate_run(ws, RUN) == []
    setup = RunSetup(workspace=ws, repo=repo, run_id=RUN, agent=None)
    setup.start()
    return setup


def _gate(setup: RunSetup, phase_id: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in setup.gate_json(phase_id)["checks"]}


def test_a_bootstrapped_plan_runs_to_success_with_reuse_and_greenfield_phases(tmp_path: Path) -> None:
    setup = bootstrapped(tmp_path)
    strategy = json.loads((setup.run_dir / "strategy.json").read_text())
    phases = {p["phase_id"]: p for p in strategy["phases"]}
    assert phases["F1.1"]["incident_token_cap"] == 75000
    assert phases["F1.1"]["why"]["budget_modifier"] == "fork_and_adapt (match 85%) -50%: 150000 -> 75000"
    assert phases["F1.2"]["incident_token_cap"] == 187500
    assert phases["F1.1"]["reuse"]["source"]["licence"] == "MIT"
    assert not phases["F1.1"]["auto_apply"] and phases["F2.1"]["task_category"] == "feature_implementation"

    outcomes = run_to_end(setup.workspace, RUN)
    run = setup.run_json()
    assert run["state"] == "DONE_SUCCESS", [o.message for o in outcomes]
    for phase_id in ("F1.1", "F1.2", "F1.3", "F2.1"):
        assert setup.phase_json(phase_id)["state"] == "COMPLETE"
        assert setup.commits_with_trailer("Autopack-Phase", phase_id)
    # reuse phases went through the auditor's review and the licence checks
    assert setup.phase_json("F1.1")["approved_attempt"] == 1
    assert _gate(setup, "F1.1")["attribution"]["message"] == "every added file keeps a licence header"
    assert _gate(setup, "F1.2")["attribution"]["message"] == "a NOTICE/THIRD_PARTY entry names the source"
    assert _gate(setup, "F1.2")["licence"]["message"] == "source licence MIT; nothing under another licence added"
    assert _gate(setup, "F2.1")["licence"]["message"] == "not an external code phase"
    assert setup.git("show", f"{setup.branch}:THIRD_PARTY_NOTICES.md") == SLOWAPI_NOTICE.replace("\\n", "")
    assert validate_run(setup.workspace, RUN) == []


GPL_COPY = f"""
write("app/auth.py", "{GPL_HEADER}def login(user, password):\\n    return user\\n")
write("THIRD_PARTY_NOTICES.md", "fastapi-users: https://github.com/fastapi-users/fastapi-users commit 5e3f1a9 MIT\\n")
"""
HEADER_DROPPED = """
write("app/users.py", "def current_user():\\n    return None\\n")
write("THIRD_PARTY_NOTICES.md", "fastapi-users: https://github.com/fastapi-users/fastapi-users commit 5e3f1a9 MIT\\n")
"""


@pytest.mark.parametrize(
    ("builder", "check", "evidence"),
    [
        (GPL_COPY, "licence", "app/auth.py:2: GPL-3.0"),
        (HEADER_DROPPED, "attribution", "app/users.py:1: drops licence header line"),
    ],
    ids=["copies-a-gpl-file", "drops-an-mit-header"],
)
def test_a_reuse_patch_breaking_a_licence_is_stopped_with_the_issue_recorded(
    tmp_path: Path, builder: str, check: str, evidence: str
) -> None:
    users = MIT_HEADER.replace("\\n", "\n") + "def current_user():\n    return 'anonymous'\n"
    setup = bootstrapped(tmp_path, builder=builder, files={"app/users.py": users})
    outcome = run_phase(setup.workspace, RUN)  # F1.1, the fork of fastapi-users
    assert outcome.phase_id == "F1.1"
    gate = _gate(setup, "F1.1")
    assert gate[check]["verdict"] == "fail" and gate["apply"]["verdict"] == "skip"
    assert any(e.startswith(evidence) for e in gate[check]["evidence"]), gate[check]
    issues = setup.issues("F1.1")["issues"]
    licence = next(i for i in issues if i["issue_key"] == f"gate:{check}")
    assert licence["category"] == "external_license_mismatch"
    assert licence["severity"] == licence["effective_severity"] == "major"
    assert licence["source"] == "gate" and licence["task_category"] == "external_feature_reuse"
    assert setup.run_index()["issues_by_key"][f"gate:{check}"]["category"] == "external_license_mismatch"
    # the patch never reached the branch
    assert not setup.commits_with_trailer("Autopack-Phase", "F1.1")
    assert setup.phase_json("F1.1")["state"] == "FAILED"
    assert setup.phase_json("F1.1")["attempts"][0]["outcome"] == "gate_failed"
    assert f"at check `{check}`" in (setup.phase_dir("F1.1") / "spec.md").read_text()  # the builder was told
