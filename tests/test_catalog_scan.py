"""`doit catalog_scan`: candidate repositories scored from local clones (docs/architecture.md, Reuse)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from pipeline.commands.validate import validate_workspace
from pipeline.core import yamlio
from pipeline.core.errors import InvalidInput
from pipeline.models.catalog import CandidateReport
from pipeline.plan.scan import scan, scan_to_file
from testing.gitrepo import make_repo

MIT = """\
MIT License

Copyright (c) 2024 Authkit authors

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND.
"""
GPL = """\
                    GNU GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007

 Copyright (C) 2007 Free Software Foundation, Inc. <https://fsf.org/>
"""
README = """\
# authkit

Username and password authentication for web APIs: user registration, login issuing a
JWT access token, password hashing, a current-user dependency protecting routes, logout.
"""
CODE = """\
import hashlib


def hash_password(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def login(user: str, password: str) -> str:
    return f"token-for-{user}"
"""
TESTS = """\
from authkit import hash_password, login


def test_hash() -> None:
    assert len(hash_password("x")) == 64


def test_login() -> None:
    assert login("ann", "pw") == "token-for-ann"
"""
FAILING = "def test_broken() -> None:\n    assert 1 == 2\n"
TODAY = date.today()


def _authkit(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"README.md": README, "authkit/__init__.py": CODE, "tests/test_authkit.py": TESTS, **extra}


def test_an_mit_repository_with_passing_tests_is_accepted(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "authkit", _authkit(tmp_path, LICENSE=MIT))
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"stargazers_count": 1500, "html_url": "https://github.com/example/authkit",
                                "archived": False, "owner": {"login": "example"}}))  # fmt: skip
    ws = tmp_path / "ws"
    report, path = scan_to_file(ws, str(repo), "auth_basic", run_tests=True, metadata=str(meta))
    assert report.verdict == "accept", report.reasons
    assert report.licence_file == "LICENSE" and report.licence_detected == "MIT"
    assert report.last_commit == TODAY.isoformat() and report.last_commit_sha and len(report.last_commit_sha) == 40
    tests = report.tests
    assert (tests.present, tests.test_files, tests.ran, tests.passed, tests.failed, tests.pass_rate) == (
        True, 1, True, 2, 0, 1.0
    )  # fmt: skip
    assert "2 passed" in tests.summary
    lines = sum(t.count("\n") for t in _authkit(tmp_path, LICENSE=MIT).values())
    assert (report.size.files, report.size.text_lines) == (4, lines)
    popularity = round(math.log10(1501) / 4, 4)
    assert report.scores.model_dump() == {
        "licence": 1.0, "activity": 1.0, "tests": 1.0, "popularity": popularity, "docs": 1.0,
        "quality": round(0.35 + 0.30 + 0.20 * popularity + 0.15, 2),
    }  # fmt: skip
    assert report.scores.quality == 0.96
    assert report.match.score >= 0.8 and {"jwt", "login", "password", "token"} <= set(report.match.matched)
    assert report.metadata == {"stars": 1500, "url": "https://github.com/example/authkit", "archived": False}
    source = report.source
    assert (source.id, source.repo, source.licence, source.has_tests, source.stars) == (
        "authkit", "https://github.com/example/authkit", "MIT", True, 1500
    )  # fmt: skip
    assert source.commit == report.last_commit_sha and source.quality_score == 0.96
    # the candidate file, for a person to review, validates
    assert path == ws / "catalog" / "candidates" / "auth_basic-authkit.yaml"
    assert "verdict accept" in path.read_text().splitlines()[0]
    assert CandidateReport.model_validate(yamlio.load_fast(path)) == report
    assert validate_workspace(ws) == []


def test_a_repository_without_a_licence_is_rejected(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "nolicence", {"README.md": README, "authkit/__init__.py": CODE})
    report = scan(tmp_path / "ws", str(repo), "auth_basic", run_tests=True)
    assert report.verdict == "reject"
    assert report.reasons[0] == "no licence found: all rights reserved, the code cannot be reused"
    assert "no tests found; the catalog requires tests" in report.reasons
    assert report.licence_file is None and report.licence_detected is None
    assert report.source.licence == "NOASSERTION"
    assert not report.tests.present and not report.tests.ran  # nothing to run
    assert report.scores.model_dump() == {
        "licence": 0.0, "activity": 1.0, "tests": 0.0, "popularity": 0.5, "docs": 1.0, "quality": 0.55
    }  # fmt: skip


def test_a_gpl_repository_is_rejected_and_failing_tests_need_review(tmp_path: Path) -> None:
    gpl = make_repo(tmp_path / "gpl", _authkit(tmp_path, COPYING=GPL))
    report = scan(tmp_path / "ws", str(gpl), "auth_basic")
    assert report.verdict == "reject" and report.licence_detected == "GPL-3.0"
    assert report.reasons[0].startswith("licence GPL-3.0 is refused in zero-intervention runs")
    assert report.tests.present and not report.tests.ran and report.scores.tests == 0.5

    broken = make_repo(tmp_path / "broken", _authkit(tmp_path, LICENSE=MIT, **{"tests/test_more.py": FAILING}))
    report = scan(tmp_path / "ws", f"file://{broken}", "auth_basic", run_tests=True)
    assert report.verdict == "review"
    assert (report.tests.passed, report.tests.failed, report.tests.pass_rate) == (2, 1, 0.6667)
    assert any(r.startswith("its tests do not all pass (pass rate 67%: ") for r in report.reasons)


def test_a_plain_directory_and_a_poor_match(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "LICENSE").write_text(MIT)
    (plain / "colours.py").write_text("RED = '#f00'\n")
    report = scan(tmp_path / "ws", str(plain), "auth_basic", today=TODAY)
    assert report.last_commit == TODAY.isoformat() and report.last_commit_sha is None
    assert "not a git clone: activity estimated from file modification times" in report.reasons
    assert report.match.score < 0.4
    assert any("it would be planned as greenfield" in r for r in report.reasons)
    assert report.verdict == "review"


@pytest.mark.parametrize(
    ("repo", "feature", "needle"),
    [
        ("https://github.com/example/authkit", "auth_basic", "cloning over the network is not available here"),
        ("git@github.com:example/authkit.git", "auth_basic", "cloning over the network is not available here"),
        ("missing-dir", "auth_basic", "no such directory"),
        (".", "auth_basc", "unknown feature 'auth_basc' (did you mean 'auth_basic'?)"),
    ],
)
def test_what_cannot_be_scanned_is_a_clear_error(tmp_path: Path, repo: str, feature: str, needle: str) -> None:
    with pytest.raises(InvalidInput) as err:
        scan(tmp_path, repo, feature)
    assert needle in err.value.message and err.value.fix


def test_bad_metadata_is_a_clear_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"LICENSE": MIT})
    (tmp_path / "m.json").write_text("[1, 2]")
    with pytest.raises(InvalidInput, match="expected a JSON object"):
        scan(tmp_path, str(repo), "auth_basic", metadata=str(tmp_path / "m.json"))


def test_doit_catalog_scan_prints_the_verdict(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "authkit", _authkit(tmp_path, LICENSE=MIT))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k.startswith("GIT_CONFIG")}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "catalog_scan", "--repo", str(repo), "--feature", "auth_basic",
         "--name", "AuthKit 2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "wrote catalog/candidates/auth_basic-authkit_2.yaml"
    assert lines[1].startswith("verdict accept: quality ") and "licence MIT" in lines[1]
    failed = subprocess.run(
        [sys.executable, "-m", "pipeline", "catalog_scan", "--repo", "https://example.invalid/x.git",
         "--feature", "auth_basic"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert failed.returncode == 2 and failed.stderr.startswith("error: ") and "git clone" in failed.stderr
