"""The gate's licence and attribution checks on external code phases (docs/architecture.md, Reuse), and the
categories of the issues those phases raise. Patches are real `git diff` output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.gate.licence import check_attribution, check_licence, external_issue_category, is_notice_file
from pipeline.gate.patch import parse_patch
from pipeline.gate.verdict import CHECK_ORDER
from pipeline.models.enums import BuilderMode, CiProfileName, Complexity, Severity
from pipeline.models.plan import PlanReuse, ReuseSource
from pipeline.models.strategy import PhaseStrategy
from pipeline.policy import licences
from testing.gitrepo import git, make_repo

MIT_HEADER = (
    "# Copyright (c) 2021 Example Authors\n"
    "# SPDX-License-Identifier: MIT\n"
    "#\n"
    "# Permission is hereby granted, free of charge, to any person obtaining a copy\n"
    "# of this software and associated documentation files (the \"Software\").\n"
)
GPL_HEADER = (
    "# This program is free software: you can redistribute it and/or modify\n"
    "# it under the terms of the GNU General Public License as published by\n"
    "# the Free Software Foundation, either version 3 of the License, or\n"
    "# (at your option) any later version.\n"
)
CODE = "def limit(key):\n    return key\n"
SOURCE = "https://github.com/laurentS/slowapi"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
NOTICE = f"## slowapi\nSource: {SOURCE}\nCommit: {COMMIT}\nLicence: MIT\n"


def reuse_phase(licence: str = "MIT", category: str = "external_feature_reuse", **changes: Any) -> PhaseStrategy:
    reuse = PlanReuse(
        feature="rate_limiting",
        decision="extract_components",
        match=0.7,
        budget_modifier=-0.25,
        source=ReuseSource(id="slowapi", repo=SOURCE, path="slowapi/", licence=licence),
    )
    fields: dict[str, Any] = {
        "phase_id": "F1.2",
        "tier_id": "T1",
        "index": 2,
        "name": "Reuse rate_limiting",
        "task_category": category,
        "requested_category": category,
        "complexity": Complexity.high,
        "builder_mode": BuilderMode.refactor_heavy,
        "high_risk": True,
        "default_severity": Severity.major,
        "ci_profile": CiProfileName.strict,
        "auto_apply": False,
        "auditor_profile": "external_code_review",
        "max_builder_attempts": 4,
        "max_auditor_attempts": 2,
        "incident_token_cap": 300_000,
        "builder_timeout_s": 60,
        "max_files": None,
        "max_changed_lines": None,
        "scope_allow": ["**"],
        "scope_deny": [],
        "builder": None,
        "auditor": None,
        "reuse": reuse if category == "external_feature_reuse" else None,
        "allowed_licences": list(licences.ALLOWED),
    }
    fields.update(changes)
    return PhaseStrategy(**fields)


def diff(tmp_path: Path, files: dict[str, str | None], base: dict[str, str] | None = None) -> Any:
    """The parsed `git diff` of writing `files` (None: delete) over a commit of `base`."""
    repo = make_repo(tmp_path / "repo", base or {"README.md": "sample\n"})
    for rel, text in files.items():
        path = repo / rel
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    git(repo, "add", "-A")
    return parse_patch(git(repo, "diff", "--cached", "--binary") + "\n")


def test_the_new_checks_run_before_apply() -> None:
    assert CHECK_ORDER.index("test_tampering") < CHECK_ORDER.index("licence") < CHECK_ORDER.index("attribution")
    assert CHECK_ORDER.index("attribution") < CHECK_ORDER.index("apply")


def test_other_phases_pass_both_checks_untouched(tmp_path: Path) -> None:
    patch = diff(tmp_path, {"app/x.py": GPL_HEADER + CODE})
    phase = reuse_phase(category="feature_implementation")
    for check in (check_licence(patch, phase), check_attribution(patch, phase)):
        assert (check.verdict, check.message) == ("pass", "not an external code phase")


def test_a_file_copied_from_a_gpl_source_fails_the_licence_check(tmp_path: Path) -> None:
    patch = diff(tmp_path, {"app/limits.py": GPL_HEADER + CODE, "THIRD_PARTY_NOTICES.md": NOTICE})
    check = check_licence(patch, reuse_phase())
    assert check.verdict == "fail" and not check.policy
    assert "not whitelisted" in check.message
    assert check.evidence[0].startswith("app/limits.py:2: GPL-3.0 ")


def test_an_spdx_line_of_a_refused_licence_fails_too(tmp_path: Path) -> None:
    patch = diff(tmp_path, {"app/limits.py": "# SPDX-License-Identifier: AGPL-3.0-only\n" + CODE})
    check = check_licence(patch, reuse_phase(category="external_code_intake"))
    assert check.verdict == "fail"
    assert check.evidence == ["app/limits.py:1: AGPL-3.0 ('# SPDX-License-Identifier: AGPL-3.0-only')"]


def test_a_source_under_a_refused_licence_fails(tmp_path: Path) -> None:
    patch = diff(tmp_path, {"app/limits.py": CODE, "NOTICE": NOTICE})
    check = check_licence(patch, reuse_phase(licence="LGPL-3.0"))
    assert check.verdict == "fail" and check.evidence == [f"source {SOURCE}: licence LGPL-3.0 is not whitelisted"]


def test_whitelisted_code_passes_the_licence_check(tmp_path: Path) -> None:
    patch = diff(tmp_path, {"app/limits.py": MIT_HEADER + CODE})
    check = check_licence(patch, reuse_phase())
    assert check.verdict == "pass" and check.message == "source licence MIT; nothing under another licence added"


def test_a_copy_keeping_its_header_is_attributed(tmp_path: Path) -> None:
    check = check_attribution(diff(tmp_path, {"app/limits.py": MIT_HEADER + CODE}), reuse_phase())
    assert (check.verdict, check.message) == ("pass", "every added file keeps a licence header")


def test_a_notice_entry_with_url_commit_and_licence_attributes_the_copies(tmp_path: Path) -> None:
    patch = diff(tmp_path, {"app/limits.py": CODE, "THIRD_PARTY_NOTICES.md": NOTICE})
    check = check_attribution(patch, reuse_phase())
    assert (check.verdict, check.message) == ("pass", "a NOTICE/THIRD_PARTY entry names the source")


def test_a_copy_without_header_or_notice_is_refused(tmp_path: Path) -> None:
    patch = diff(tmp_path, {"app/limits.py": CODE, "app/keys.py": MIT_HEADER + CODE})
    check = check_attribution(patch, reuse_phase())
    assert check.verdict == "fail"
    assert check.evidence == [
        "app/limits.py: added without a licence header, and no NOTICE/THIRD_PARTY entry names the source"
    ]


def test_dropping_an_mit_header_is_refused_even_with_a_notice(tmp_path: Path) -> None:
    base = {"app/limits.py": MIT_HEADER + CODE}
    patch = diff(tmp_path, {"app/limits.py": CODE.replace("key", "client"), "NOTICE": NOTICE}, base=base)
    check = check_attribution(patch, reuse_phase())
    assert check.verdict == "fail"
    assert check.evidence[0] == "app/limits.py:1: drops licence header line '# Copyright (c) 2021 Example Authors'"
    assert any("SPDX-License-Identifier: MIT" in e for e in check.evidence)


def test_an_edit_keeping_the_header_is_attributed_by_the_notice_in_the_worktree(tmp_path: Path) -> None:
    base = {"app/limits.py": MIT_HEADER + CODE}
    edit = {"app/limits.py": MIT_HEADER + CODE.replace("key", "client")}
    patch = diff(tmp_path / "1", edit, base=base)
    assert _verdicts(patch, tmp_path / "1" / "repo") == ("pass", "fail")  # nothing names the source
    patch = diff(tmp_path / "2", {**edit, "app/new.py": CODE}, base={**base, "NOTICE": NOTICE})
    assert _verdicts(patch, tmp_path / "2" / "repo") == ("pass", "pass")  # the NOTICE already does
    assert _verdicts(patch, None) == ("pass", "fail")


def _verdicts(patch: Any, worktree: Path | None) -> tuple[str, str]:
    phase = reuse_phase()
    return check_licence(patch, phase).verdict, check_attribution(patch, phase, worktree).verdict


@pytest.mark.parametrize(
    ("notice", "gap"),
    [
        (f"Source: {SOURCE}\nLicence: MIT\n", "a commit id"),
        (f"Commit: {COMMIT}\nLicence: MIT\n", f"the source URL {SOURCE}"),
        (f"Source: {SOURCE}\nCommit: {COMMIT}\n", "the licence (MIT)"),
    ],
)
def test_an_incomplete_notice_names_what_it_lacks(tmp_path: Path, notice: str, gap: str) -> None:
    check = check_attribution(diff(tmp_path, {"app/limits.py": CODE, "NOTICE.md": notice}), reuse_phase())
    assert check.verdict == "fail" and check.evidence == [f"the NOTICE/THIRD_PARTY entry lacks {gap}"]


@pytest.mark.parametrize(
    ("path", "notice"),
    [
        ("NOTICE", True),
        ("NOTICE.md", True),
        ("THIRD_PARTY_NOTICES.md", True),
        ("third-party-licenses.txt", True),
        ("LICENSES/MIT.txt", True),
        ("app/notice.py", True),
        ("app/limits.py", False),
        ("README.md", False),
    ],
)
def test_notice_files(path: str, notice: bool) -> None:
    assert is_notice_file(path) is notice


@pytest.mark.parametrize(
    ("category", "kind", "evidence", "expected"),
    [
        ("external_feature_reuse", "licence", [], "external_license_mismatch"),
        ("external_code_intake", "attribution", [], "external_license_mismatch"),
        ("external_feature_reuse", "apply", ["patch does not apply"], "external_code_incompatible"),
        ("external_feature_reuse", "ci", ["E   ModuleNotFoundError: No module named 'redis'"],
         "external_dependency_version_conflict"),
        ("external_feature_reuse", "ci", ["assert 429 == 200"], "external_code_incompatible"),
        ("external_feature_reuse", "scope", [], None),
        ("feature_implementation", "licence", [], None),
    ],
)  # fmt: skip
def test_issue_categories_of_external_code_phases(
    category: str, kind: str, evidence: list[str], expected: str | None
) -> None:
    assert external_issue_category(category, kind, evidence) == expected


@pytest.mark.parametrize(
    ("text", "spdx"),
    [
        ("Permission is hereby granted, free of charge, to any person obtaining a copy of this", "MIT"),
        ("Apache License\n  Version 2.0, January 2004\n", "Apache-2.0"),
        ("Redistribution and use in source and binary forms, with or without\nmodification, are permitted",
         "BSD-2-Clause"),
        ("Redistribution and use in source and binary forms ...\n3. Neither the name of the copyright holder",
         "BSD-3-Clause"),
        ("Permission to use, copy, modify, and/or distribute this software for any purpose", "ISC"),
        ("GNU GENERAL PUBLIC LICENSE\n Version 3, 29 June 2007", "GPL-3.0"),
        ("GNU GENERAL PUBLIC LICENSE\n Version 2, June 1991", "GPL-2.0"),
        ("GNU LESSER GENERAL PUBLIC LICENSE\n Version 3, 29 June 2007", "LGPL-3.0"),
        ("GNU LESSER GENERAL PUBLIC LICENSE\n Version 2.1, February 1999", "LGPL-2.1"),
        ("GNU AFFERO GENERAL PUBLIC LICENSE\n Version 3, 19 November 2007", "AGPL-3.0"),
        ("Mozilla Public License Version 2.0\n==================================", "MPL-2.0"),
        ("All rights reserved.", None),
    ],
)  # fmt: skip
def test_licence_texts_are_recognised(text: str, spdx: str | None) -> None:
    assert licences.identify_text(text) == spdx
