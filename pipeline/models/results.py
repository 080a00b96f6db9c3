"""What agents hand back (AUTOPACK_RESULT) and what the supervisor records of an attempt."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.models.base import Frozen
from pipeline.models.enums import Severity


class SuggestedIssue(Frozen):
    issue_key: str = Field(min_length=1)
    severity: Severity = Severity.minor
    category: str = "builder_self_doubt"
    message: str = ""
    evidence_refs: list[str] = Field(default_factory=list)
    expected_fail: bool = Field(
        default=False, description="a known failure the phase is not meant to fix (recorded, counted, not a surprise)"
    )


class Usage(Frozen):
    tokens_in: int = Field(default=0, ge=0)
    tokens_out: int = Field(default=0, ge=0)
    tokens_cached: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)
    turns: int = Field(default=0, ge=0)

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out


class BuilderResult(Frozen):
    """The optional JSON an agent writes to $AUTOPACK_RESULT."""

    status: Literal["success", "partial", "failed"] = "success"
    usage: Usage = Field(default_factory=Usage)
    suggested_issues: list[SuggestedIssue] = Field(default_factory=list)
    notes: str = ""


class AuditorResult(Frozen):
    verdict: Literal["approve", "revise", "reject"]
    patch: str | None = Field(default=None, description="path of a suggested patch (revise)")
    usage: Usage = Field(default_factory=Usage)
    issues: list[SuggestedIssue] = Field(default_factory=list)
    notes: str = ""


AttemptOutcome = Literal[
    "running",
    "auditor_rejected",
    "agent_failed",
    "timed_out",
    "no_change",
    "bad_result",
    "budget_refused",
    "gate_failed",
    "policy_violation",
    "ci_failed",
    "passed",
    "superseded",  # the auditor's review replaced it with its own revision (the next attempt)
]


class AttemptRecord(Frozen):
    """builder.json: one builder (or submitted) attempt as the supervisor saw it."""

    k: int = Field(ge=1)
    role: Literal["builder", "auditor", "submit"]
    agent: str
    command: str | None
    base_commit: str | None = Field(default=None, description="branch tip the attempt started from")
    started_at: str
    finished_at: str | None = None
    exit_code: int | None = None
    timed_out: bool = False
    usage: Usage = Field(default_factory=Usage)
    patch_sha256: str | None = None
    patch_files: list[str] = Field(default_factory=list)
    excluded_files: list[str] = Field(
        default_factory=list, description="files the agent CLI wrote for itself, left out of the patch"
    )
    transient_errors: int = Field(
        default=0, ge=0, description="errors the CLI reported and got past (reconnects, retries): warnings"
    )
    outcome: AttemptOutcome = "running"
    reason: str = ""
    fingerprint: str | None = None
    result_notes: str = ""


class AuditRecord(Frozen):
    """audit/<k>/auditor.json: one auditor call as the supervisor saw it."""

    k: int = Field(ge=1)
    purpose: Literal["review", "escalation"]
    profile: str | None
    command: str | None
    started_at: str
    finished_at: str | None = None
    exit_code: int | None = None
    timed_out: bool = False
    usage: Usage = Field(default_factory=Usage)
    verdict: Literal["approve", "revise", "reject"] | None = None
    patch_sha256: str | None = None
    notes: str = ""
    error: str = ""
