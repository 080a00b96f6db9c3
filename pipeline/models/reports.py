"""Gate and CI reports (gate.json, ci/<k>/ci.json)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.models.base import SCHEMA_VERSION, Frozen, Ident

CheckVerdict = Literal["pass", "fail", "skip"]


class GateCheck(Frozen):
    name: str
    verdict: CheckVerdict
    message: str = ""
    evidence: list[str] = Field(default_factory=list)
    policy: bool = Field(default=False, description="a failure here is a policy violation")


class GateReport(Frozen):
    schema_version: int = SCHEMA_VERSION
    phase_id: Ident
    attempt: int
    verdict: CheckVerdict
    checks: list[GateCheck]
    touched_paths: list[str] = Field(default_factory=list)
    three_way: bool = False

    @property
    def policy_violation(self) -> bool:
        return any(c.policy and c.verdict == "fail" for c in self.checks)


class TestCaseResult(Frozen):
    node_id: str
    outcome: Literal["passed", "failed", "error", "skipped"]
    message: str = ""


class CiStepResult(Frozen):
    name: str
    cmd: str
    returncode: int | None
    duration_s: float
    timed_out: bool = False
    missing_command: bool = False
    junit: str | None = None
    log: str
    tests: list[TestCaseResult] = Field(default_factory=list)
    passed_not_listed: int = Field(
        default=0,
        ge=0,
        description="passing tests counted but not listed in `tests` (a step with very many tests: "
        "failing ones are always listed)",
    )


class CiTry(Frozen):
    n: int
    verdict: CheckVerdict
    steps: list[CiStepResult]


class CiReport(Frozen):
    schema_version: int = SCHEMA_VERSION
    phase_id: Ident
    attempt: int
    profile: str
    verdict: CheckVerdict
    tries: list[CiTry]
    failing_tests: list[str] = Field(default_factory=list)
    flaky_tests: list[str] = Field(default_factory=list)
    environment_error: str | None = None
