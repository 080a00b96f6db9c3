"""Issues at three levels (docs/architecture.md, Issues)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.models.base import SCHEMA_VERSION, Frozen, Ident
from pipeline.models.enums import Complexity, IssueSource, Severity


class Issue(Frozen):
    issue_key: str = Field(min_length=1)
    severity: Severity
    effective_severity: Severity
    source: IssueSource
    category: str
    task_category: str
    complexity: Complexity
    expected_fail: bool = False
    occurrence_count: int = Field(default=1, ge=1)
    first_seen_run: str
    last_seen_run: str
    evidence_refs: list[str] = Field(default_factory=list)
    message: str = ""
    status: Literal["open", "resolved"] = Field(
        default="open", description="resolved: gone from the accepted attempt's gate and CI results"
    )
    seen_in_attempts: list[int] = Field(default_factory=list, description="attempts (k) that recorded it")
    resolved_in_attempt: int | None = Field(default=None, description="the accepted attempt it was absent from")


IssueState = Literal["no_issues", "has_minor_issues", "has_major_issues"]


class PhaseIssueFile(Frozen):
    schema_version: int = SCHEMA_VERSION
    phase_id: Ident
    tier_id: Ident
    issues: list[Issue] = Field(default_factory=list)
    minor_issue_count: int = 0
    major_issue_count: int = 0
    issue_state: IssueState = "no_issues"


class RunIssueEntry(Frozen):
    category: str
    severity: Severity
    effective_severity: Severity
    first_phase_index: int
    last_phase_index: int
    occurrence_count: int
    seen_in_tiers: list[str]
    seen_in_phases: list[str]
    status: Literal["open", "resolved"] = Field(default="open", description="resolved: in every phase it was seen in")


class RunIssueIndex(Frozen):
    schema_version: int = SCHEMA_VERSION
    run_id: Ident
    issues_by_key: dict[str, RunIssueEntry] = Field(default_factory=dict)


BacklogStatus = Literal["open", "needs_cleanup", "resolved"]


class BacklogEntry(Frozen):
    category: str
    base_severity: Severity
    age_in_runs: int
    age_in_tiers: int
    first_seen_run_id: str
    last_seen_run_id: str
    last_seen_at: str
    status: BacklogStatus
    last_seen_phase_id: str | None = Field(default=None, description="phase of the newest appearance")
    evidence_refs: list[str] = Field(
        default_factory=list, description="distinct evidence of every appearance (sorted, capped)"
    )
    message: str = Field(default="", description="the newest appearance's message")
    resolved_by: str | None = Field(
        default=None, description='what resolved it: "debt_cleanup <run>/<phase>" or "ci <run>/<phase>"'
    )


class ProjectBacklog(Frozen):
    schema_version: int = SCHEMA_VERSION
    project_id: str | None = Field(default=None, description="the project of the run that wrote it")
    issues_by_key: dict[str, BacklogEntry] = Field(default_factory=dict)
    runs_read: int = Field(default=0, ge=0, description="started runs the backlog was derived from")
