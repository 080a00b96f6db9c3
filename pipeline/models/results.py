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


# Bounds on what an agent may claim (a result file is hostile input): far above any real
# call, far below what overflows a 64-bit integer when a report sums a thousand runs.
MAX_TOKENS = 10**12
MAX_COST_USD = 10.0**7
MAX_TURNS = 10**7


UsageSource = Literal["reported", "estimated", "unknown"]


class UsageSources(Frozen):
    """Where each usage figure comes from: `reported` by the CLI (or the agent's result
    file), `estimated` by the supervisor (a cost from a price table), or `unknown` (the CLI
    said nothing usable: the figure is null, never zero)."""

    tokens_in: UsageSource = "reported"
    tokens_out: UsageSource = "reported"
    tokens_cached: UsageSource = "reported"
    cost_usd: UsageSource = "reported"


class Usage(Frozen):
    tokens_in: int | None = Field(default=0, ge=0, le=MAX_TOKENS, description="null: unknown (see sources)")
    tokens_out: int | None = Field(default=0, ge=0, le=MAX_TOKENS, description="null: unknown (see sources)")
    tokens_cached: int | None = Field(default=0, ge=0, le=MAX_TOKENS, description="null: unknown (see sources)")
    cost_usd: float | None = Field(default=0.0, ge=0, le=MAX_COST_USD, description="null: unknown (see sources)")
    turns: int = Field(default=0, ge=0, le=MAX_TURNS)
    model: str | None = Field(default=None, description="the model the figures are for, where known")
    sources: UsageSources = Field(default_factory=UsageSources)

    @property
    def tokens(self) -> int:
        """The known tokens (an unknown count adds nothing here: budgets charge the call's
        reservation for it, `tokens_known` says whether they must)."""
        return (self.tokens_in or 0) + (self.tokens_out or 0)

    @property
    def tokens_known(self) -> bool:
        return self.tokens_in is not None and self.tokens_out is not None

    @property
    def cost_known(self) -> bool:
        return self.cost_usd is not None


UNKNOWN_USAGE = Usage(
    tokens_in=None,
    tokens_out=None,
    tokens_cached=None,
    cost_usd=None,
    sources=UsageSources(tokens_in="unknown", tokens_out="unknown", tokens_cached="unknown", cost_usd="unknown"),
)


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
