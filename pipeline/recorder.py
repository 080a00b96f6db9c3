"""The run's record keeper: every state change is checked, logged as an event, and written.

Layer L4. The runner never touches run.json, phase.json or events.jsonl directly; it asks
the Recorder, so "every transition is an event" and "run.json names the event head" hold
by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import states
from pipeline.jsonio import read_model, write_model
from pipeline.models.enums import PhaseState, RunState, TierState
from pipeline.models.issues import PhaseIssueFile
from pipeline.models.run import PhaseRecord, PhaseSummary, RunRecord, Spend, TierSummary
from pipeline.models.strategy import PhaseStrategy, Strategy
from pipeline.store import RunStore, utc_now


def add_spend(a: Spend, b: Spend) -> Spend:
    return Spend(**{k: getattr(a, k) + getattr(b, k) for k in Spend.model_fields})


class Recorder:
    """Holds the current run and phase records and persists every change atomically."""

    def __init__(self, store: RunStore, strategy: Strategy, run: RunRecord) -> None:
        self.store = store
        self.strategy = strategy
        self.run = run
        self._phases: dict[str, PhaseRecord] = {}

    # -- loading -----------------------------------------------------------------------

    @classmethod
    def open(cls, store: RunStore) -> Recorder:
        run = read_model(store.run_json, RunRecord)
        strategy = read_model(store.strategy_json, Strategy)
        store.events.verify(expected_count=run.events_count, expected_head=run.events_head or None)
        return cls(store, strategy, run)

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
        event = self.store.events.append(kind, entity, frm, to, data)
        seq, head = self.store.events.head
        self.run = self.run.model_copy(update={"events_count": seq, "events_head": head})
        return event.seq

    def note(self, entity: str, what: str, **data: Any) -> int:
        """An event that is not a state change (a commit made, a check result)."""
        seq = self._event("note", entity, None, None, {"what": what, **data})
        self.save_run()
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
        ps = self.strategy.phase(rec.phase_id)
        write_model(self.phase_dir(ps) / "phase.json", rec)
        self._phases[rec.phase_id] = rec
        self._refresh_summaries(rec, ps)
        self.save_run()
        return rec

    def save_issues(self, file: PhaseIssueFile) -> None:
        ps = self.strategy.phase(file.phase_id)
        write_model(self.phase_dir(ps) / "issues.json", file)

    def save_run(self) -> None:
        self.run = self.run.model_copy(update={"updated_at": utc_now()})
        write_model(self.store.run_json, self.run)

    def _refresh_summaries(self, rec: PhaseRecord, ps: PhaseStrategy) -> None:
        phases = [
            s.model_copy(
                update={
                    "state": rec.state,
                    "attempts": len(rec.attempts),
                    "tokens": rec.spend.tokens,
                    "cost_usd": rec.spend.cost_usd,
                    "commit": rec.commit,
                    "tag": rec.tag,
                }
            )
            if s.phase_id == rec.phase_id
            else s
            for s in self.run.phases
        ]
        tiers = []
        for tier in self.run.tiers:
            if tier.tier_id == ps.tier_id:
                tier = tier.model_copy(update={"spend": self._tier_spend(tier.tier_id)})
            tiers.append(tier)
        total = Spend()
        for tier in tiers:
            total = add_spend(total, tier.spend)
        active = self.run.spend.active_seconds
        self.run = self.run.model_copy(
            update={"phases": phases, "tiers": tiers, "spend": total.model_copy(update={"active_seconds": active})}
        )

    def _tier_spend(self, tier_id: str) -> Spend:
        total = Spend()
        for ps in self.strategy.phases:
            if ps.tier_id == tier_id and (ps.phase_id in self._phases or (self.phase_dir(ps) / "phase.json").exists()):
                total = add_spend(total, self.phase(ps.phase_id).spend)
        return total

    def add_active_seconds(self, seconds: float) -> None:
        spend = self.run.spend.model_copy(update={"active_seconds": self.run.spend.active_seconds + seconds})
        self.run = self.run.model_copy(update={"spend": spend})
        self.save_run()


def initial_summaries(strategy: Strategy, tier_names: dict[str, str]) -> tuple[list[TierSummary], list[PhaseSummary]]:
    tiers = [
        TierSummary(tier_id=t.tier_id, name=tier_names[t.tier_id], state=TierState.PENDING) for t in strategy.tiers
    ]
    phases = [
        PhaseSummary(
            phase_id=p.phase_id,
            tier_id=p.tier_id,
            index=p.index,
            name=p.name,
            task_category=p.task_category,
            complexity=p.complexity.value,
            state=PhaseState.QUEUED,
        )
        for p in strategy.phases
    ]
    return tiers, phases
