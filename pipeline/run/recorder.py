"""The run's record keeper: every state change is checked, logged as an event, and written.

The runner never touches run.json, phase.json or events.jsonl directly; it asks
the Recorder, so "every transition is an event" and "run.json names the event head" hold
by construction.

Writes, in the order they are made:

- every event is appended when it happens and fsynced (in a step, `group_log_syncs`:
  with the events after it, before the next child process starts or the step ends,
  `flush`, whichever comes first): the log is the run's
  durability point; the artifacts are written atomically without an fsync each (see
  "Crash safety" in docs/architecture.md);
- phase.json is written before the next durable effect of any kind: an event, another
  file's atomic write, a child process (agent, git, CI; see `jsonio.add_barrier`) or the
  end of the step. Saves of a phase with nothing in between become one write, and a
  process killed at any instant leaves what writing each save at once could have left.
- run.json is written when the run's own state changes (a run or tier transition, a
  note, an explicit `save_run`) and by `flush()`, which ends every step (`RunContext`)
  and precedes every copy of the record into a commit. What run.json only summarises
  (phase and tier summaries, spend, the event head) may lag the phase files and the log
  after a crash: `Recorder.open` rebuilds the summaries from the phase files, and a log
  ahead of run.json is what `EventLog.verify` tolerates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from pipeline.core import failpoints
from pipeline.core.errors import InvalidInput
from pipeline.core.jsonio import (
    add_barrier,
    log_is_durability_point,
    model_text,
    read_model,
    remove_barrier,
    write_text_atomic,
)
from pipeline.models.enums import Complexity, PhaseState, RunState, TierState
from pipeline.models.issues import PhaseIssueFile
from pipeline.models.run import PhaseRecord, PhaseSummary, RunRecord, Spend, TierSummary
from pipeline.models.strategy import PhaseStrategy, Strategy
from pipeline.policy import states
from pipeline.store import chain
from pipeline.store.events import utc_now
from pipeline.store.rundir import RunStore


def add_spend(a: Spend, b: Spend) -> Spend:
    return Spend(**{k: getattr(a, k) + getattr(b, k) for k in Spend.model_fields})


def sum_spends(spends: Iterable[Spend]) -> Spend:
    """`Spend()` + each of `spends` in turn (the same sums as chained `add_spend`, one model)."""
    totals = Spend().model_dump()
    for spend in spends:
        for k in totals:
            totals[k] += getattr(spend, k)
    return Spend(**totals)


class Recorder:
    """Holds the current run and phase records and persists every change atomically."""

    def __init__(self, store: RunStore, strategy: Strategy, run: RunRecord) -> None:
        self.store = store
        self.strategy = strategy
        self.run = run
        self._phases: dict[str, PhaseRecord] = {}
        self._run_dirty = False  # self.run holds changes run.json does not have yet
        # phase.json texts saved but not written yet, oldest save first
        self._unwritten: dict[Path, str] = {}
        # Set by a caller that flushes when it is done (RunContext, which ends every step):
        # events are then fsynced in groups rather than one by one.
        self.group_log_syncs = False
        # The event log is the run directory's durability point: its appends are fsynced,
        # the artifacts are written atomically without an fsync each (module docstring).
        log_is_durability_point(store.run_dir)

    # -- loading -----------------------------------------------------------------------

    @classmethod
    def open(cls, store: RunStore) -> Recorder:
        run = read_model(store.run_json, RunRecord)
        strategy = read_model(store.strategy_json, Strategy)
        store.events.verify(expected_count=run.events_count, expected_head=run.events_head or None)
        rec = cls(store, strategy, run)
        rec._roll_forward()
        rec._check_chain()
        rec._repair_summaries()
        return rec

    def _roll_forward(self) -> None:
        """run.json is written after the event that changes it, so a kill in between leaves
        the log ahead of run.json. The log is the durability point: the run transitions it
        holds beyond run.json are taken again (nothing else is read from them), and run.json
        names the log's head."""
        events = self.store.events.read()
        if len(events) <= self.run.events_count:
            return
        state = self.run.state
        for event in events[self.run.events_count :]:
            if event.kind == "run" and event.entity == self.run.run_id and event.from_state == state.value:
                state = RunState(event.to_state) if event.to_state else state
        seq, head = self.store.events.head
        update: dict[str, Any] = {"events_count": seq, "events_head": head}
        if state != self.run.state:
            update["state"] = state
            if state.terminal:
                update["finished_at"] = events[-1].ts
        self.run = self.run.model_copy(update=update)
        self.save_run()

    def _check_chain(self) -> None:
        """The strategy, run.json and every phase.json as the event chain names them: a
        forged or deleted file stops the run before it acts on it (exit 2)."""
        states: dict[str, tuple[Path, str | None]] = {}
        for ps in self.strategy.phases:
            path = self.phase_dir(ps) / "phase.json"
            states[ps.phase_id] = (path, self.phase(ps.phase_id).state.value if path.exists() else None)
        run_dir, events = self.store.run_dir, self.store.events_path
        found = chain.problems(run_dir, events, self.run.run_id, self.run.state.value, states)
        if found:
            more = f" (+{len(found) - 1} more: `doit validate --run {self.run.run_id}`)" if len(found) > 1 else ""
            raise InvalidInput(
                f"the run record disagrees with its event chain: {found[0]}{more}",
                "restore the record from git (`git checkout -- runs/<run>`), or start a new run id",
            )

    def phase_dir(self, phase: PhaseStrategy) -> Path:
        return self.store.phase_dir(phase.index, phase.phase_id)

    def phase(self, phase_id: str) -> PhaseRecord:
        if phase_id not in self._phases:
            ps = self.strategy.phase(phase_id)
            self._phases[phase_id] = read_model(self.phase_dir(ps) / "phase.json", PhaseRecord)
        return self._phases[phase_id]

    def issues(self, phase_id: str) -> PhaseIssueFile:
        ps = self.strategy.phase(phase_id)
        path = self.phase_dir(ps) / "issues.json"
        if path.exists():
            return read_model(path, PhaseIssueFile)
        return PhaseIssueFile(phase_id=ps.phase_id, tier_id=ps.tier_id)

    # -- events ------------------------------------------------------------------------

    def _event(self, kind: str, entity: str, frm: str | None, to: str | None, data: dict[str, Any]) -> int:
        self._write_phases()
        # In a step (`group_log_syncs`): fsynced once for the group of events it appends,
        # before the next child process (the barrier) or the end of the step (`flush`).
        event = self.store.events.append(kind, entity, frm, to, data, sync=not self.group_log_syncs)
        if self.group_log_syncs:
            add_barrier(self._sync_log, children_only=True)
        failpoints.hit("event_appended")
        seq, head = self.store.events.head
        self.run = self.run.model_copy(update={"events_count": seq, "events_head": head})
        return event.seq

    def _repair_summaries(self) -> None:
        """Summaries rebuilt from the phase files: a run.json left behind by a crash (the
        phase files are written first) is brought up to date at the next write."""
        recs: dict[str, PhaseRecord] = {}
        for ps in self.strategy.phases:
            if ps.phase_id in self._phases or (self.phase_dir(ps) / "phase.json").exists():
                recs[ps.phase_id] = self.phase(ps.phase_id)
        repaired = refresh_summaries(self.run, recs)
        if repaired != self.run:
            self.run = repaired
            self._run_dirty = True

    def note(self, entity: str, what: str, **data: Any) -> int:
        """An event that is not a state change (a commit made, a check result)."""
        seq = self._event("note", entity, None, None, {"what": what, **data})
        self.save_run()
        return seq

    def note_before_transition(self, entity: str, what: str, **data: Any) -> int:
        """`note`, for a caller that makes a run transition right after: run.json is
        written once, by that transition (a log ahead of run.json is what a crash in
        between leaves, and what `EventLog.verify` tolerates)."""
        seq = self._event("note", entity, None, None, {"what": what, **data})
        self._run_dirty = True
        return seq

    # -- transitions -------------------------------------------------------------------

    def run_to(self, to: RunState, **data: Any) -> None:
        frm = self.run.state
        states.check_run(frm, to)
        self._event("run", self.run.run_id, frm.value, to.value, data)
        update: dict[str, Any] = {"state": to}
        if to.terminal:
            update["finished_at"] = utc_now()
        self.run = self.run.model_copy(update=update)
        self.save_run()

    def tier_to(self, tier_id: str, to: TierState, **data: Any) -> None:
        tiers = []
        for tier in self.run.tiers:
            if tier.tier_id == tier_id:
                states.check_tier(tier.state, to)
                self._event("tier", tier_id, tier.state.value, to.value, data)
                tier = tier.model_copy(update={"state": to})
            tiers.append(tier)
        self.run = self.run.model_copy(update={"tiers": tiers})
        self.save_run()

    def phase_to(self, phase_id: str, to: PhaseState, **data: Any) -> PhaseRecord:
        rec = self.phase(phase_id)
        states.check_phase(rec.state, to)
        self._event("phase", phase_id, rec.state.value, to.value, data)
        return self.save_phase(rec.model_copy(update={"state": to}))

    # -- writing -----------------------------------------------------------------------

    def save_phase(self, rec: PhaseRecord) -> PhaseRecord:
        """Save a phase record: phase.json is written before the next durable effect
        (module docstring), run.json's summary of it with the next run write."""
        ps = self.strategy.phase(rec.phase_id)
        path = self.phase_dir(ps) / "phase.json"
        text = model_text(path, rec)  # checked now: a bad record fails here, not later
        self._unwritten.pop(path, None)
        self._unwritten[path] = text
        add_barrier(self._write_phases)
        self._phases[rec.phase_id] = rec
        self._refresh_summaries(rec, ps)
        self._run_dirty = True
        return rec

    def save_issues(self, file: PhaseIssueFile) -> None:
        ps = self.strategy.phase(file.phase_id)
        path = self.phase_dir(ps) / "issues.json"
        write_text_atomic(path, model_text(path, file))

    def save_run(self) -> None:
        """Write run.json now (after the phase files it summarises)."""
        self._write_phases()
        self.run = self.run.model_copy(update={"updated_at": utc_now()})
        write_text_atomic(self.store.run_json, model_text(self.store.run_json, self.run))
        self._run_dirty = False

    def flush(self) -> None:
        """Write everything this recorder holds back (the end of a step, before a copy),
        and fsync the event log."""
        self._write_phases()
        if self._run_dirty:
            self.save_run()
        self._sync_log()

    def _sync_log(self) -> None:
        remove_barrier(self._sync_log)
        self.store.events.sync()

    def _write_phases(self) -> None:
        remove_barrier(self._write_phases)  # first: the writes below pass the barrier
        while self._unwritten:
            path, text = next(iter(self._unwritten.items()))
            write_text_atomic(path, text)
            del self._unwritten[path]

    def _refresh_summaries(self, rec: PhaseRecord, ps: PhaseStrategy) -> None:
        phases = [_summary_of(s, rec) if s.phase_id == rec.phase_id else s for s in self.run.phases]
        tiers = []
        for tier in self.run.tiers:
            if tier.tier_id == ps.tier_id:
                tier = tier.model_copy(update={"spend": self._tier_spend(tier.tier_id)})
            tiers.append(tier)
        self.run = self.run.model_copy(update={"phases": phases, "tiers": tiers, "spend": _run_spend(self.run, tiers)})

    def _tier_spend(self, tier_id: str) -> Spend:
        return sum_spends(
            self.phase(ps.phase_id).spend
            for ps in self.strategy.phases
            if ps.tier_id == tier_id and (ps.phase_id in self._phases or (self.phase_dir(ps) / "phase.json").exists())
        )

    def add_active_seconds(self, seconds: float) -> None:
        """Count active time (written with the next run write or `flush`)."""
        spend = self.run.spend.model_copy(update={"active_seconds": self.run.spend.active_seconds + seconds})
        self.run = self.run.model_copy(update={"spend": spend})
        self._run_dirty = True


def _summary_of(summary: PhaseSummary, rec: PhaseRecord) -> PhaseSummary:
    """`summary` (run.json's line for a phase) brought up to date with its phase record."""
    return summary.model_copy(
        update={
            "state": rec.state,
            "attempts": len(rec.attempts),
            "tokens": rec.spend.tokens,
            "cost_usd": rec.spend.cost_usd,
            "commit": rec.commit,
            "tag": rec.tag,
        }
    )


def _run_spend(run: RunRecord, tiers: list[TierSummary]) -> Spend:
    """The run's spend: its tiers' spend added up, with the run's own active time."""
    total = sum_spends(tier.spend for tier in tiers)
    return total.model_copy(update={"active_seconds": run.spend.active_seconds})


def refresh_summaries(run: RunRecord, records: Mapping[str, PhaseRecord]) -> RunRecord:
    """`run` with its summaries brought up to date with the phase records `records` (by
    phase id; a phase without one keeps its line): each phase's line, each tier's spend
    (its phases' spend added up) and the run's (its tiers', with the run's own active time)."""
    phases = [_summary_of(s, records[s.phase_id]) if s.phase_id in records else s for s in run.phases]

    def tier_spend(tier_id: str) -> Spend:
        return sum_spends(
            records[s.phase_id].spend for s in run.phases if s.tier_id == tier_id and s.phase_id in records
        )

    tiers = [tier.model_copy(update={"spend": tier_spend(tier.tier_id)}) for tier in run.tiers]
    return run.model_copy(update={"phases": phases, "tiers": tiers, "spend": _run_spend(run, tiers)})


class PhaseIdentity(Protocol):
    """What run.json's line for a phase names it by (a `PhaseStrategy` has it)."""

    @property
    def phase_id(self) -> str: ...
    @property
    def tier_id(self) -> str: ...
    @property
    def index(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def task_category(self) -> str: ...
    @property
    def complexity(self) -> Complexity: ...


def queued_summary(phase: PhaseIdentity) -> PhaseSummary:
    """run.json's line for a phase not started yet."""
    return PhaseSummary(
        phase_id=phase.phase_id,
        tier_id=phase.tier_id,
        index=phase.index,
        name=phase.name,
        task_category=phase.task_category,
        complexity=phase.complexity.value,
        state=PhaseState.QUEUED,
    )


def initial_summaries(strategy: Strategy, tier_names: dict[str, str]) -> tuple[list[TierSummary], list[PhaseSummary]]:
    tiers = [
        TierSummary(tier_id=t.tier_id, name=tier_names[t.tier_id], state=TierState.PENDING) for t in strategy.tiers
    ]
    return tiers, [queued_summary(p) for p in strategy.phases]
