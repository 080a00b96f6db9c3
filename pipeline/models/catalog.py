"""Stack profiles (profiles/stacks.yaml), the curated feature catalog (catalog/features.yaml)
and catalog candidates (catalog/candidates/*.yaml) — docs/architecture.md, Reuse"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from pipeline.models.base import Frozen, Ident
from pipeline.models.enums import CiProfileName, Complexity

# A calendar date as text. Quote it in YAML ('2026-01-31'); an unquoted date is accepted too
# (the loader turns it back into this text).
DateText = Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}$")]
# Feature, profile and project-type names: lower snake case.
Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
# An SPDX licence id (`MIT`) or a simple expression of ids (`MIT OR Apache-2.0`).
SpdxExpression = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9.+-]+(?: (?:OR|AND) [A-Za-z0-9.+-]+)*$")
]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]

ReuseDecision = Literal["fork_and_adapt", "extract_components", "greenfield"]


# --------------------------------------------------------------------------- stack profiles


class Stack(Frozen):
    """The building blocks a profile's projects use (null: none)."""

    language: str | None = None
    backend: str | None = None
    db: str | None = None
    frontend: str | None = None
    vector_db: str | None = None
    queue: str | None = None
    cache: str | None = None
    packaging: str | None = None


class StackProfile(Frozen):
    description: str = ""
    project_types: list[Name] = Field(min_length=1, description="project types this profile serves")
    stack: Stack = Field(default_factory=Stack)
    preferred_sources: list[Ident] = Field(
        default_factory=list, description="catalog source ids this profile prefers when matches tie"
    )
    budget_modifier: float = Field(
        default=0.0, ge=-0.9, le=1.0, description="fraction added to every phase's incident_token_cap"
    )
    ci_profile: CiProfileName = Field(default=CiProfileName.normal, description="default CI profile of its phases")
    scope: list[str] = Field(
        default_factory=lambda: ["**"], min_length=1, description="allow globs of the phases planned for it"
    )


class StackProfiles(Frozen):
    version: int = 1
    project_types: dict[Name, str] = Field(
        min_length=1, description="every project type (with what it is); each maps to exactly one profile"
    )
    profiles: dict[Name, StackProfile] = Field(min_length=1)


# --------------------------------------------------------------------------- the catalog


class CandidateSource(Frozen):
    """One curated place a feature's code can be taken from."""

    id: Ident
    repo: str = Field(min_length=1, description="repository URL (or a local path / file:// URL)")
    path: str = Field(default="", description="directory or file inside the repository")
    licence: SpdxExpression = Field(description="SPDX licence id of the source")
    quality_score: Fraction
    last_activity: DateText = Field(description="date of the last commit when it was reviewed")
    has_tests: bool
    compatible_stacks: list[Name] = Field(
        default_factory=list, description="stack profiles it fits; empty: any"
    )
    match: Fraction = Field(description="share of the feature it already provides")
    commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{7,40}$", description="reviewed commit")
    adapt: str = Field(default="", description="what has to be adapted when it is reused")
    stars: int | None = Field(default=None, ge=0)
    notes: str = ""


class Feature(Frozen):
    description: str = Field(min_length=1)
    category: Name = Field(description="area: auth, api, data, infra, ui, ...")
    complexity: Complexity
    task_category: str = Field(
        default="feature_implementation", min_length=1, description="category of its greenfield phase"
    )
    sources: list[CandidateSource] = Field(default_factory=list)


class FeatureCombination(Frozen):
    """Features that belong together: planned in one tier, with an optional integration phase."""

    features: list[Name] = Field(min_length=2)
    description: str = ""
    integration: str = Field(default="", description="what the integration phase wires together; empty: none")


class LicencePolicy(Frozen):
    allowed: list[str] = Field(min_length=1, description="SPDX ids usable in zero-intervention runs")
    note: str = ""


class QualityThresholds(Frozen):
    min_quality_score: Fraction = 0.7
    require_tests: bool = True
    max_inactive_days: int = Field(
        default=730, ge=1, description="last_activity at most this many days before reviewed_on"
    )
    fork_match: Fraction = Field(default=0.8, description="match at or above: fork and adapt")
    extract_match: Fraction = Field(default=0.4, description="match at or above: extract components")
    fork_budget_modifier: float = Field(default=-0.5, ge=-0.9, le=0.0)
    extract_budget_modifier: float = Field(default=-0.25, ge=-0.9, le=0.0)


class Catalog(Frozen):
    version: int = 1
    reviewed_on: DateText = Field(description="when the catalog was last curated")
    licence_policy: LicencePolicy
    thresholds: QualityThresholds = Field(default_factory=QualityThresholds)
    features: dict[Name, Feature] = Field(min_length=1)
    combinations: dict[Name, FeatureCombination] = Field(default_factory=dict)


# --------------------------------------------------------------------------- candidates


class TestEvidence(Frozen):
    present: bool
    test_files: int = 0
    ran: bool = False
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    pass_rate: Fraction | None = None
    summary: str = ""
    timed_out: bool = False


class SizeEvidence(Frozen):
    files: int
    text_lines: int
    bytes: int


class MatchEvidence(Frozen):
    score: Fraction
    matched: list[str] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list)


class CandidateScores(Frozen):
    licence: Fraction
    activity: Fraction
    tests: Fraction
    popularity: Fraction
    docs: Fraction
    quality: Fraction


class CandidateReport(Frozen):
    """catalog/candidates/<feature>-<name>.yaml: a scanned repository, for a person to review."""

    feature: Name
    scanned_on: DateText
    scanned_path: str
    verdict: Literal["accept", "review", "reject"]
    reasons: list[str] = Field(default_factory=list)
    licence_file: str | None = None
    licence_detected: str | None = None
    last_commit: str | None = None
    last_commit_sha: str | None = None
    tests: TestEvidence
    size: SizeEvidence
    match: MatchEvidence
    metadata: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    scores: CandidateScores
    source: CandidateSource = Field(description="the entry to paste under the feature's sources")
