"""pipeline.policy.states: the one transition table, checked over the full cross product."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import pytest

from pipeline.core.errors import TransitionError
from pipeline.models.enums import PhaseState, RunState, TierState
from pipeline.policy.states import (
    PHASE_TRANSITIONS,
    RUN_TRANSITIONS,
    TIER_TRANSITIONS,
    allowed_phase_targets,
    allowed_run_targets,
    allowed_tier_targets,
    check_phase,
    check_run,
    check_tier,
)

R, T, P = RunState, TierState, PhaseState
FAILED = {s for s in RunState if s.value.startswith("DONE_FAILED_")}

# The table as the spec states it, written out independently of the module.
EXPECTED_RUN: dict[RunState, set[RunState]] = {
    R.PLAN_BOOTSTRAP: {R.RUN_CREATED},
    R.RUN_CREATED: {R.PHASE_QUEUEING, R.DONE_FAILED_ENVIRONMENT, R.DONE_FAILED_BUDGET_EXHAUSTED},
    R.PHASE_QUEUEING: {R.PHASE_EXECUTION, R.DONE_SUCCESS, *FAILED},
    R.PHASE_EXECUTION: {R.GATE, R.PHASE_EXECUTION, R.PHASE_QUEUEING, *FAILED},
    R.GATE: {R.CI_RUNNING, R.PHASE_EXECUTION, R.PHASE_QUEUEING, *FAILED},
    R.CI_RUNNING: {R.SNAPSHOT_CREATED, R.PHASE_EXECUTION, R.PHASE_QUEUEING, *FAILED},
    R.SNAPSHOT_CREATED: {R.PHASE_QUEUEING, R.DONE_SUCCESS, *FAILED},
}
EXPECTED_TIER: dict[TierState, set[TierState]] = {
    T.PENDING: {T.IN_PROGRESS, T.SKIPPED},
    T.IN_PROGRESS: {T.COMPLETE, T.FAILED},
}
EXPECTED_PHASE: dict[PhaseState, set[PhaseState]] = {
    P.QUEUED: {P.EXECUTING, P.SKIPPED, P.FAILED},
    P.EXECUTING: {P.GATE, P.EXECUTING, P.FAILED},
    P.GATE: {P.CI_RUNNING, P.EXECUTING, P.FAILED},
    P.CI_RUNNING: {P.COMPLETE, P.EXECUTING, P.FAILED},
}
TERMINAL_RUN = {s for s in RunState if s.value.startswith("DONE_")}
TERMINAL_TIER = {T.COMPLETE, T.FAILED, T.SKIPPED}
TERMINAL_PHASE = {P.COMPLETE, P.FAILED, P.SKIPPED}

Table = dict[Any, set[Any]]
CASES: list[
    tuple[str, type[StrEnum], Table, set[Any], Callable[..., None], Callable[..., object]]
] = [
    ("run", RunState, EXPECTED_RUN, TERMINAL_RUN, check_run, allowed_run_targets),
    ("tier", TierState, EXPECTED_TIER, TERMINAL_TIER, check_tier, allowed_tier_targets),
    ("phase", PhaseState, EXPECTED_PHASE, TERMINAL_PHASE, check_phase, allowed_phase_targets),
]


@pytest.mark.parametrize(("kind", "enum", "expected", "terminal", "check", "targets"), CASES)
def test_full_cross_product(kind, enum, expected, terminal, check, targets) -> None:  # type: ignore[no-untyped-def]
    allowed_count = refused_count = 0
    for frm, to in itertools.product(enum, enum):
        if to in expected.get(frm, set()):
            check(frm, to)
            allowed_count += 1
            continue
        with pytest.raises(TransitionError) as info:
            check(frm, to)
        msg = info.value.message
        assert msg.startswith(f"{kind} transition {frm.value} -> {to.value} ")
        assert info.value.fix
        if frm in terminal:
            assert f"the {kind} is finished" in msg
        refused_count += 1
    assert allowed_count == sum(len(v) for v in expected.values())
    assert allowed_count + refused_count == len(enum) ** 2
    for state in enum:
        assert targets(state) == frozenset(expected.get(state, set()))


def test_tables_cover_every_state() -> None:
    assert set(RUN_TRANSITIONS) == set(RunState)
    assert set(TIER_TRANSITIONS) == set(TierState)
    assert set(PHASE_TRANSITIONS) == set(PhaseState)
    for state in TERMINAL_RUN:
        assert RUN_TRANSITIONS[state] == frozenset()


def test_terminal_states_are_refused() -> None:
    with pytest.raises(TransitionError, match="run is finished"):
        check_run(R.DONE_SUCCESS, R.PHASE_QUEUEING)
    with pytest.raises(TransitionError, match="phase is finished"):
        check_phase(P.COMPLETE, P.EXECUTING)
    with pytest.raises(TransitionError, match="tier is finished"):
        check_tier(T.SKIPPED, T.IN_PROGRESS)


def test_examples() -> None:
    msg = "run transition PHASE_QUEUEING -> GATE is not allowed"
    with pytest.raises(TransitionError, match=msg):
        check_run(R.PHASE_QUEUEING, R.GATE)
    with pytest.raises(TransitionError, match="phase transition GATE -> GATE"):
        check_phase(P.GATE, P.GATE)
    check_phase(P.EXECUTING, P.EXECUTING)
    check_run(R.PHASE_EXECUTION, R.PHASE_EXECUTION)
    # plain strings (e.g. read back from run.json) are accepted; unknown ones are refused
    check_run("PLAN_BOOTSTRAP", "RUN_CREATED")  # type: ignore[arg-type]
    with pytest.raises(TransitionError, match="unknown run state"):
        check_run("PLAN_BOOTSTRAP", "NOPE")  # type: ignore[arg-type]


def test_tables_are_immutable() -> None:
    with pytest.raises(TypeError):
        RUN_TRANSITIONS[R.DONE_SUCCESS] = frozenset({R.PHASE_QUEUEING})  # type: ignore[index]
