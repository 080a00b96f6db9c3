"""The closed vocabularies of docs/architecture.md: One phase, Governance"""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    PLAN_BOOTSTRAP = "PLAN_BOOTSTRAP"
    RUN_CREATED = "RUN_CREATED"
    PHASE_QUEUEING = "PHASE_QUEUEING"
    PHASE_EXECUTION = "PHASE_EXECUTION"
    GATE = "GATE"
    CI_RUNNING = "CI_RUNNING"
    SNAPSHOT_CREATED = "SNAPSHOT_CREATED"
    DONE_SUCCESS = "DONE_SUCCESS"
    DONE_FAILED_BUDGET_EXHAUSTED = "DONE_FAILED_BUDGET_EXHAUSTED"
    DONE_FAILED_POLICY_VIOLATION = "DONE_FAILED_POLICY_VIOLATION"
    DONE_FAILED_REQUIRES_HUMAN_REVIEW = "DONE_FAILED_REQUIRES_HUMAN_REVIEW"
    DONE_FAILED_ENVIRONMENT = "DONE_FAILED_ENVIRONMENT"

    @property
    def terminal(self) -> bool:
        return self.value.startswith("DONE_")


class PhaseState(StrEnum):
    QUEUED = "QUEUED"
    EXECUTING = "EXECUTING"
    GATE = "GATE"
    CI_RUNNING = "CI_RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"

    @property
    def terminal(self) -> bool:
        return self in (PhaseState.COMPLETE, PhaseState.FAILED, PhaseState.SKIPPED)


class TierState(StrEnum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


class SafetyProfile(StrEnum):
    normal = "normal"
    safety_critical = "safety_critical"


class RunScope(StrEnum):
    multi_tier = "multi_tier"
    single_tier = "single_tier"


class Complexity(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"


class BuilderMode(StrEnum):
    tweak_light = "tweak_light"
    scaffolding_heavy = "scaffolding_heavy"
    refactor_heavy = "refactor_heavy"
    schema_heavy = "schema_heavy"


class Severity(StrEnum):
    minor = "minor"
    major = "major"


class IssueSource(StrEnum):
    test = "test"
    probe = "probe"
    ci = "ci"
    static_check = "static_check"
    builder_self_doubt = "builder_self_doubt"
    auditor = "auditor"
    gate = "gate"
    budget = "budget"


class CiProfileName(StrEnum):
    normal = "normal"
    strict = "strict"


class Verdict(StrEnum):
    passed = "pass"
    failed = "fail"
    skipped = "skip"
