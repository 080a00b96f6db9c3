"""One line of `runs/<run_id>/events.jsonl` (docs/architecture.md, Invariants): a hash-chained state change."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, JsonValue, StringConstraints

from pipeline.models.base import Frozen

# ISO-8601 UTC with a `Z` suffix, optional fractional seconds: 2026-11-21T12:00:00Z
UTC_TS_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$"
SHA256_HEX_PATTERN = r"^[0-9a-f]{64}$"

UtcTimestamp = Annotated[str, StringConstraints(pattern=UTC_TS_PATTERN)]
Sha256Hex = Annotated[str, StringConstraints(pattern=SHA256_HEX_PATTERN)]


class Event(Frozen):
    """A state change (or a note) of the run, a tier or a phase."""

    seq: Annotated[int, Field(ge=1, description="1-based position in the log")]
    ts: Annotated[UtcTimestamp, Field(description="ISO-8601 UTC, e.g. 2026-11-21T12:00:00Z")]
    kind: Annotated[str, Field(min_length=1, description='"run", "tier", "phase", "note", ...')]
    entity: Annotated[str, Field(min_length=1, description="run id, tier id or phase id")]
    from_state: str | None = None
    to_state: str | None = None
    data: dict[str, JsonValue] = Field(default_factory=dict)
    prev_sha256: Annotated[
        Sha256Hex,
        Field(description="sha256 hex of the previous line's bytes (of b'' for the first)"),
    ]
