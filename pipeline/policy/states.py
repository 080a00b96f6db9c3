"""The one table of allowed run, tier and phase transitions (docs/architecture.md: Invariants, One phase). Pure.

Any change not listed here is a TransitionError: a bug in the caller, never a state that
waits for a human. A same-state change is allowed only where listed (a phase's next
attempt: EXECUTING -> EXECUTING, PHASE_EXECUTION -> PHASE_EXECUTION).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import TypeVar

from pipeline.core.errors import TransitionError
from pipeline.models.enums import PhaseState, RunState, TierState

S = TypeVar("S", bound=StrEnum)

_R = RunState
_T = TierState
_P = PhaseState

RUN_TERMINAL: frozenset[RunState] = frozenset(s for s in RunState if s.terminal)
RUN_FAILED: frozenset[RunState] = frozenset(
    s for s in RunState if s.value.startswith("DONE_FAILED_")
)
TIER_TERMINAL: frozenset[TierState] = frozenset({_T.COMPLETE, _T.FAILED, _T.SKIPPED})
PHASE_TERMINAL: frozenset[PhaseState] = frozenset(s for s in PhaseState if s.terminal)

RUN_TRANSITIONS: Mapping[RunState, frozenset[RunState]] = MappingProxyType({
    _R.PLAN_BOOTSTRAP: frozenset({_R.RUN_CREATED}),
    _R.RUN_CREATED: frozenset(
        {_R.PHASE_QUEUEING, _R.DONE_FAILED_ENVIRONMENT, _R.DONE_FAILED_BUDGET_EXHAUSTED}
    ),
    _R.PHASE_QUEUEING: frozenset({_R.PHASE_EXECUTION, _R.DONE_SUCCESS}) | RUN_FAILED,
    # PHASE_EXECUTION again: the phase's next attempt; PHASE_QUEUEING: the phase ended failed.
    _R.PHASE_EXECUTION: frozenset({_R.GATE, _R.PHASE_EXECUTION, _R.PHASE_QUEUEING}) | RUN_FAILED,
    _R.GATE: frozenset({_R.CI_RUNNING, _R.PHASE_EXECUTION, _R.PHASE_QUEUEING}) | RUN_FAILED,
    _R.CI_RUNNING: frozenset({_R.SNAPSHOT_CREATED, _R.PHASE_EXECUTION, _R.PHASE_QUEUEING})
    | RUN_FAILED,
    _R.SNAPSHOT_CREATED: frozenset({_R.PHASE_QUEUEING, _R.DONE_SUCCESS}) | RUN_FAILED,
    **{s: frozenset() for s in RUN_TERMINAL},
})

TIER_TRANSITIONS: Mapping[TierState, frozenset[TierState]] = MappingProxyType({
    _T.PENDING: frozenset({_T.IN_PROGRESS, _T.SKIPPED}),
    _T.IN_PROGRESS: frozenset({_T.COMPLETE, _T.FAILED}),
    **{s: frozenset() for s in TIER_TERMINAL},
})

PHASE_TRANSITIONS: Mapping[PhaseState, frozenset[PhaseState]] = MappingProxyType({
    # FAILED straight from QUEUED: e.g. the budget refused the phase before it started.
    _P.QUEUED: frozenset({_P.EXECUTING, _P.SKIPPED, _P.FAILED}),
    # EXECUTING again: the next attempt.
    _P.EXECUTING: frozenset({_P.GATE, _P.EXECUTING, _P.FAILED}),
    _P.GATE: frozenset({_P.CI_RUNNING, _P.EXECUTING, _P.FAILED}),
    _P.CI_RUNNING: frozenset({_P.COMPLETE, _P.EXECUTING, _P.FAILED}),
    **{s: frozenset() for s in PHASE_TERMINAL},
})

_FIX = (
    "this is a bug in Autopack's driver (it tried a change the transition table in "
    "pipeline/states.py forbids); report it with the run's events.jsonl"
)


def _check(
    kind: str,
    enum: type[S],
    table: Mapping[S, frozenset[S]],
    terminal: frozenset[S],
    frm: S | str,
    to: S | str,
) -> None:
    try:
        a, b = enum(frm), enum(to)
    except ValueError as exc:
        known = ", ".join(s.value for s in enum)
        raise TransitionError(
            f"{kind} transition {frm} -> {to}: unknown {kind} state (known: {known})", _FIX
        ) from exc
    allowed = table[a]
    if b in allowed:
        return
    if a in terminal:
        raise TransitionError(
            f"{kind} transition {a.value} -> {b.value} is not allowed: "
            f"the {kind} is finished ({a.value} is terminal)",
            _FIX,
        )
    targets = ", ".join(sorted(s.value for s in allowed))
    raise TransitionError(
        f"{kind} transition {a.value} -> {b.value} is not allowed "
        f"(from {a.value} only: {targets})",
        _FIX,
    )


def check_run(frm: RunState, to: RunState) -> None:
    """Raise TransitionError unless the run may go from `frm` to `to`."""
    _check("run", RunState, RUN_TRANSITIONS, RUN_TERMINAL, frm, to)


def check_tier(frm: TierState, to: TierState) -> None:
    """Raise TransitionError unless a tier may go from `frm` to `to`."""
    _check("tier", TierState, TIER_TRANSITIONS, TIER_TERMINAL, frm, to)


def check_phase(frm: PhaseState, to: PhaseState) -> None:
    """Raise TransitionError unless a phase may go from `frm` to `to`."""
    _check("phase", PhaseState, PHASE_TRANSITIONS, PHASE_TERMINAL, frm, to)


def allowed_run_targets(frm: RunState) -> frozenset[RunState]:
    return RUN_TRANSITIONS[RunState(frm)]


def allowed_tier_targets(frm: TierState) -> frozenset[TierState]:
    return TIER_TRANSITIONS[TierState(frm)]


def allowed_phase_targets(frm: PhaseState) -> frozenset[PhaseState]:
    return PHASE_TRANSITIONS[PhaseState(frm)]
