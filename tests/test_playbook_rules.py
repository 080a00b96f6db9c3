"""The playbook's rules, one test each, named after the rule (docs/governance.md lists
them with their ruleset keys and defaults).

Every test drives a real run (temporary git repositories, scripted agents run as
subprocesses, real CI steps) or compiles a real strategy, and reads the record it left.
"""

from __future__ import annotations

from pathlib import Path

from test_governance import finish, governed

from testing.runs import phase

# -- §5.2: counts are of distinct issue_keys ----------------------------------------------


def _same_keys_in_every_phase(keys: list[str]) -> str:
    issues = [{"issue_key": k, "severity": "minor", "message": f"{k} again"} for k in keys]
    return f'write(f"{{PHASE}}.py", "Y = 1\\n")\nresult(suggested_issues={issues!r})'


def test_tier_issue_counts_are_of_distinct_issue_keys(tmp_path: Path) -> None:
    # 3 keys reported by both phases of T1: 3 distinct minors <= 4 tolerated (2 per phase).
    tiers = [{"tier_id": "T1", "name": "One", "phases": [phase("P1"), phase("P2")]}]
    setup = governed(tmp_path, builder=_same_keys_in_every_phase(["a", "b", "c"]), tiers=tiers)
    run = finish(setup)
    (tier,) = run["tiers"]
    assert tier["minor_issue_count"] == 3 and tier["major_issue_count"] == 0
    assert tier["cleanliness"] == "clean", tier["cleanliness_reasons"]
    assert run["state"] == "DONE_SUCCESS" and run["promotion_eligible_to_main"] is True
    entry = setup.run_index()["issues_by_key"]["a"]
    assert entry["occurrence_count"] == 2 and entry["seen_in_phases"] == ["P1", "P2"]
    assert "distinct minor issues 3 of 4" in (setup.run_dir / "tiers" / "T1.md").read_text()


def test_run_minor_issue_cap_counts_distinct_issue_keys(tmp_path: Path) -> None:
    # 4 keys in both phases: 4 distinct <= 6 (3 per phase); their occurrences (8) are not counted.
    tiers = [
        {"tier_id": "T1", "name": "One", "phases": [phase("P1")]},
        {"tier_id": "T2", "name": "Two", "phases": [phase("P2")]},
    ]
    ruleset = "safety_profiles:\n  normal:\n    tier_minor_per_phase: 4\n"
    setup = governed(tmp_path, builder=_same_keys_in_every_phase(["a", "b", "c", "d"]), tiers=tiers, ruleset=ruleset)
    run = finish(setup)
    assert run["state"] == "DONE_SUCCESS", run["failure_reason"]
    assert run["debt_status"] == "has_minor_debt"
    assert [t["minor_issue_count"] for t in run["tiers"]] == [4, 4]
