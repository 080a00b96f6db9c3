"""One gate check's result with its evidence, kept short enough to read and to feed back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from pipeline.models.reports import GateCheck

if TYPE_CHECKING:  # both cost tens of ms to import; a task that never gates skips them
    pass


# A failure of these ends the run as a policy violation; the others go back to the builder.
POLICY_CHECKS = frozenset({"paths_safe", "protected_paths", "scope", "secrets", "applied_paths"})




_EVIDENCE_LIMIT = 20


def gate_check(name: str, ok: bool, message: str, evidence: Iterable[str] = ()) -> GateCheck:
    return GateCheck(
        name=name,
        verdict="pass" if ok else "fail",
        message=message,
        evidence=limit_evidence(list(evidence)),
        policy=name in POLICY_CHECKS,
    )


def limit_evidence(evidence: list[str], limit: int = _EVIDENCE_LIMIT) -> list[str]:
    if len(evidence) <= limit:
        return evidence
    return [*evidence[:limit], f"... and {len(evidence) - limit} more"]
