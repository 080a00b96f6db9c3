"""How fast reports read a large run tree: `doit report` and a backlog query at 1,000 and 10,000 runs.

    .venv/bin/python bench/reports.py [--runs 1000 10000] [--root DIR] [--regenerate]

For each size it generates a workspace of synthetic runs (10 phases in 3 tiers each; the
artifacts a real run writes and reports read: run.json, run_issue_index.json,
events.jsonl, and per phase phase.json, issues.json, attempts/<k>/builder.json and
ci/<k>/ci.json). Every artifact is built with the pydantic models (so it validates), from
the pieces testing/runtree.py builds the reports tests' runs with (run.json's summaries by
the recorder's own `refresh_summaries`); the first run of each workspace is written
through `pipeline.core.jsonio.write_model`, the rest as the same canonical JSON with plain
writes (no fsync, two processes), or generating 10,000 runs would take minutes. Every
50th run.json is written "by an older schema version": without the optional fields added
later (`promoted_commit`, `promoted_at`).

Then it times:

- `python -m pipeline report` (a fresh process, cwd = the workspace): cold (no rollup, no
  doit state), warm (nothing changed: doit skips it), incremental (one run.json touched:
  one run re-read) and forced (doit state deleted, the rollup current);
- a backlog query, "top 20 issue keys by distinct runs", in this process: DuckDB on an
  open connection over the rollup; the same with what `doit sql` does first (check for
  changed runs, define the views); DuckDB over the run_issue_index.json files directly
  (the live views); and plain Python (`json.load` of the same files in a loop). The
  answers are compared; the ratios are printed.

Targets (reported, never failed on): cold report over 10,000 runs under 5 s; DuckDB at
least 3x faster than plain Python for the query. Workspaces are kept under --root and
reused unless --regenerate. The default root is /dev/shm when it exists: creating the
470,000 files of 10,000 runs on this VM's disk took 1-6 minutes depending on load.
Reading is served from the page cache either way once the files are warm.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from multiprocessing import Pool
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline.core.jsonio import canonical_json, write_model
from pipeline.issues.rules import build_run_index, record_issues
from pipeline.models.enums import Complexity, IssueSource, PhaseState, RunState, SafetyProfile, Severity, TierState
from pipeline.models.events import Event
from pipeline.models.issues import Issue, PhaseIssueFile
from pipeline.models.reports import CiReport, TestCaseResult
from pipeline.models.results import AttemptOutcome, AttemptRecord, Usage
from pipeline.models.run import PhaseRecord, RunRecord, Spend, TierSummary

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, which holds `testing`
from testing.runtree import (
    EventChain,
    PhasePlan,
    attempt_spend,
    ci_report,
    debt_status,
    new_issue,
    older_schema_json,
    phase_record,
    run_record,
)

TARGET_REPORT_S = 5.0
TARGET_RATIO = 3.0
# issue 15's targets (10,000 runs)
TARGET_COLD_S = 2.0
TARGET_ONE_CHANGED_S = 0.5
TARGET_SQL_S = 0.1
TARGET_BACKLOG_S = 0.3
PHASES = 10
TIERS = (("T1", "Core", 4), ("T2", "Features", 3), ("T3", "Hardening", 3))
START = datetime(2026, 1, 1, tzinfo=UTC)
AGENTS = (("claude", 0.72, 3.0e-6), ("codex", 0.62, 2.0e-6), ("aider", 0.5, 1.2e-6))
CATEGORIES = (
    ("feature_implementation", Complexity.medium),
    ("feature_scaffolding", Complexity.medium),
    ("bugfix", Complexity.low),
    ("tests", Complexity.low),
    ("docs", Complexity.low),
    ("performance", Complexity.medium),
    ("config_change", Complexity.low),
    ("schema_contract_change", Complexity.high),
    ("cross_cutting_refactor", Complexity.high),
    ("security_auth_change", Complexity.high),
)
FATES = (
    (RunState.DONE_SUCCESS, 0.65),
    (RunState.DONE_FAILED_BUDGET_EXHAUSTED, 0.18),
    (RunState.DONE_FAILED_POLICY_VIOLATION, 0.08),
    (RunState.DONE_FAILED_REQUIRES_HUMAN_REVIEW, 0.05),
    (RunState.DONE_FAILED_ENVIRONMENT, 0.04),
)
FAILED_OUTCOMES: tuple[tuple[AttemptOutcome, float], ...] = (
    ("ci_failed", 0.6),
    ("gate_failed", 0.2),
    ("no_change", 0.05),
    ("agent_failed", 0.05),
    ("timed_out", 0.05),
    ("bad_result", 0.05),
)
TEST_KEYS = [f"tests/test_mod{n % 40}.py::test_case_{n}" for n in range(300)]
DOUBT_KEYS = [f"doubt-{n}" for n in range(80)]
OLD_SCHEMA_DROPS = ("promoted_commit", "promoted_at")  # fields added to run.json later


def ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def pick(rng: random.Random, weighted: Any) -> Any:
    return rng.choices([w[0] for w in weighted], weights=[w[1] for w in weighted])[0]


def zipf_key(rng: random.Random, keys: list[str]) -> str:
    """A few keys recur in many runs (an aging backlog), most are rare."""
    return keys[min(int(rng.paretovariate(1.2)) - 1, len(keys) - 1)]


# -- one synthetic run, built with the models (and testing.runtree's pieces) -------------------


class RunBuilder:
    """Builds every artifact of run `i` deterministically (random.Random(i))."""

    def __init__(self, i: int) -> None:
        self.i = i
        self.rng = random.Random(i)
        self.run_id = f"r{i:05d}"
        self.created = START + timedelta(minutes=37 * i)
        self.clock = self.created
        self.agent, self.skill, self.price = AGENTS[self.rng.choices(range(3), weights=(5, 3, 2))[0]]
        self.fate = pick(self.rng, FATES)
        self.failing_index = self.rng.randint(1, PHASES) if self.fate != RunState.DONE_SUCCESS else 0
        self.safety = SafetyProfile.safety_critical if self.rng.random() < 0.2 else SafetyProfile.normal
        self.files: dict[str, BaseModel | str] = {}
        self.events = EventChain()

    def tick(self, seconds: float) -> str:
        self.clock += timedelta(seconds=seconds)
        return ts(self.clock)

    def event(self, kind: str, entity: str, frm: str | None, to: str | None, **data: Any) -> None:
        self.events.add(ts(self.clock), kind, entity, frm, to, **data)

    def plans(self) -> list[PhasePlan]:
        out, index = [], 1
        for tier_id, _, count in TIERS:
            for _ in range(count):
                category, complexity = CATEGORIES[self.rng.randrange(len(CATEGORIES))]
                out.append(PhasePlan(f"P{index}", tier_id, index, f"{category} {index}", category, complexity))
                index += 1
        return out

    def usage(self, complexity: Complexity) -> Usage:
        scale = {Complexity.low: 8_000, Complexity.medium: 25_000, Complexity.high: 60_000}[complexity]
        tokens_in = int(scale * self.rng.uniform(0.5, 1.8))
        tokens_out = int(tokens_in * self.rng.uniform(0.1, 0.4))
        return Usage(
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cost_usd=round((tokens_in + tokens_out) * self.price, 6),
            turns=self.rng.randint(1, 12),
        )

    def issue(self, p: PhasePlan, key: str, source: IssueSource, category: str, severity: Severity) -> Issue:
        return new_issue(
            self.run_id,
            key,
            severity,
            source,
            category,
            p.task_category,
            p.complexity,
            evidence_refs=[f"phases/{p.index:02d}-{p.phase_id}/attempts/1/builder.log"],
            message=f"{key} ({source.value})",
        )

    def ci_report(self, p: PhasePlan, k: int, passed: bool, failing: str) -> CiReport:
        tests = [TestCaseResult(node_id=TEST_KEYS[(self.i + j) % len(TEST_KEYS)], outcome="passed") for j in range(7)]
        if not passed:
            tests.append(TestCaseResult(node_id=failing, outcome="failed", message="AssertionError: expected 2"))
        return ci_report(
            p.phase_id,
            k,
            tests,
            [round(self.rng.uniform(2, 40), 3) for _ in range(1 if passed else 2)],
            passed=passed,
            cmd="python -m pytest -q --junitxml={junit}",
            profile="strict" if p.complexity == Complexity.high else "normal",
            junit=True,
        )

    def phase(self, p: PhasePlan, outcome: str) -> tuple[PhaseRecord, PhaseIssueFile]:
        """Run phase p to `outcome`: "pass", "fail" (by the run's fate) or "skip"."""
        pdir = f"phases/{p.index:02d}-{p.phase_id}"
        issues = PhaseIssueFile(phase_id=p.phase_id, tier_id=p.tier_id)
        attempts: list[AttemptRecord] = []
        spends: list[Spend] = []
        if outcome == "skip":
            return phase_record(self.run_id, p, PhaseState.QUEUED, attempts, spends, issues, ""), issues
        self.event("phase", p.phase_id, "QUEUED", "EXECUTING", attempt=1)
        skill = self.skill - {Complexity.low: -0.1, Complexity.medium: 0.0, Complexity.high: 0.2}[p.complexity]
        max_k = 3 + (1 if p.complexity == Complexity.high else 0)
        for k in range(1, max_k + 1):
            auditor = p.complexity == Complexity.high and k == max_k
            use = self.usage(p.complexity)
            started = ts(self.clock)
            passes = outcome == "pass" and (self.rng.random() < skill + 0.12 * (k - 1) or k == max_k)
            if passes:
                kind: AttemptOutcome = "passed"
            elif outcome == "fail" and k == max_k:
                final: dict[RunState, AttemptOutcome] = {
                    RunState.DONE_FAILED_POLICY_VIOLATION: "policy_violation",
                    RunState.DONE_FAILED_BUDGET_EXHAUSTED: "budget_refused",
                    RunState.DONE_FAILED_REQUIRES_HUMAN_REVIEW: "auditor_rejected",
                    RunState.DONE_FAILED_ENVIRONMENT: "ci_failed",
                }
                kind = final[self.fate]
            else:
                kind = pick(self.rng, FAILED_OUTCOMES)
            attempt = AttemptRecord(
                k=k,
                role="auditor" if auditor else "builder",
                agent="codex-review" if auditor else self.agent,
                command=None,
                base_commit="0" * 40,
                started_at=started,
                finished_at=self.tick(self.rng.uniform(20, 600)),
                exit_code=0,
                usage=use,
                patch_sha256=hashlib.sha256(f"{self.run_id}{p.phase_id}{k}".encode()).hexdigest(),
                patch_files=[f"src/mod{p.index}.py", f"tests/test_mod{p.index}.py"],
                outcome=kind,
                reason="" if kind == "passed" else kind.replace("_", " "),
            )
            attempts.append(attempt)
            self.files[f"{pdir}/attempts/{k}/builder.json"] = attempt
            new: list[Issue] = []
            ci_runs = 0
            if kind in ("ci_failed", "passed"):
                failing = zipf_key(self.rng, TEST_KEYS)
                self.files[f"{pdir}/ci/{k}/ci.json"] = self.ci_report(p, k, kind == "passed", failing)
                ci_runs = 1
                if kind == "ci_failed":
                    new.append(self.issue(p, f"test:{failing}", IssueSource.test, "test_failure", Severity.minor))
            elif kind in ("gate_failed", "policy_violation"):
                check = "scope" if kind == "policy_violation" else self.rng.choice(["size", "static", "tamper"])
                sev = Severity.major if kind == "policy_violation" else Severity.minor
                new.append(self.issue(p, f"gate:{check}", IssueSource.gate, f"gate_{check}", sev))
            elif kind == "budget_refused":
                new.append(self.issue(p, "budget:tokens", IssueSource.budget, "budget", Severity.major))
            if self.rng.random() < 0.15:
                new.append(
                    self.issue(
                        p,
                        zipf_key(self.rng, DOUBT_KEYS),
                        IssueSource.builder_self_doubt,
                        "builder_self_doubt",
                        Severity.minor,
                    )
                )
            issues = record_issues(issues, new)
            spends.append(attempt_spend(attempt, ci_runs, round(self.rng.uniform(20, 600), 3)))
            if kind == "passed" or k == max_k:
                break
            self.event("phase", p.phase_id, "CI_RUNNING", "EXECUTING", attempt=k + 1, after=kind)
        done = outcome == "pass"
        state = PhaseState.COMPLETE if done else PhaseState.FAILED
        self.event("phase", p.phase_id, "CI_RUNNING" if done else "GATE", state.value)
        commit = hashlib.sha1(f"{self.run_id}{p.phase_id}".encode()).hexdigest()
        return phase_record(self.run_id, p, state, attempts, spends, issues, commit), issues

    def build(self) -> dict[str, BaseModel | str]:
        self.event("run", self.run_id, "PLAN_BOOTSTRAP", "RUN_CREATED")
        plans = self.plans()
        records: list[PhaseRecord] = []
        phase_files: list[tuple[int, PhaseIssueFile]] = []
        for p in plans:
            outcome = (
                "pass"
                if not self.failing_index or p.index < self.failing_index
                else ("fail" if p.index == self.failing_index else "skip")
            )
            record, issues = self.phase(p, outcome)
            pdir = f"phases/{p.index:02d}-{p.phase_id}"
            self.files[f"{pdir}/phase.json"] = record
            self.files[f"{pdir}/issues.json"] = issues
            records.append(record)
            phase_files.append((p.index, issues))
        self.files["run_issue_index.json"] = build_run_index(self.run_id, phase_files)
        self.event("run", self.run_id, "PHASE_QUEUEING", self.fate.value)
        self.files["run.json"] = self.run_record(plans, records)
        self.files["events.jsonl"] = self.events.text()
        return self.files

    def settled(self, tier: TierSummary, records: list[PhaseRecord]) -> TierSummary:
        """The tier's state and cleanliness once the run ended."""
        states = {r.state for r in records}
        if PhaseState.FAILED in states:
            state, reasons = TierState.FAILED, ["tier is FAILED"]
        elif states == {PhaseState.COMPLETE}:
            state, reasons = TierState.COMPLETE, []
        else:
            return tier
        if tier.spend.major_issues:
            reasons.append(f"{tier.spend.major_issues} major issue(s) > 0 tolerated")
        cap = (2 if self.safety == SafetyProfile.normal else 1) * len(records)
        if tier.spend.minor_issues > cap:
            reasons.append(f"{tier.spend.minor_issues} minor issue(s) > {cap} tolerated")
        return tier.model_copy(
            update={"state": state, "cleanliness": "not_clean" if reasons else "clean", "cleanliness_reasons": reasons}
        )

    def run_record(self, plans: list[PhasePlan], records: list[PhaseRecord]) -> RunRecord:
        """run.json: the summaries brought up to date with the phase records, then each tier
        settled and the promotion verdict given (as the supervisor does when a run ends)."""
        run = run_record(
            self.run_id,
            plans,
            [TierSummary(tier_id=tier_id, name=name, state=TierState.PENDING) for tier_id, name, _ in TIERS],
            records,
            max_minor_issues=3 * PHASES,
            project_id=("atlas", "borealis", "cobalt")[self.i % 3],
            state=self.fate,
            safety_profile=self.safety,
            base_commit="0" * 40,
            plan_sha256=hashlib.sha256(self.run_id.encode()).hexdigest(),
            spend=Spend(active_seconds=round((self.clock - self.created).total_seconds(), 3)),
            created_at=ts(self.created),
            updated_at=ts(self.clock),
            finished_at=ts(self.clock),
            events_count=len(self.events.lines),
            events_head=self.events.head,
        )
        tiers = [self.settled(t, [r for r in records if r.tier_id == t.tier_id]) for t in run.tiers]
        failed = next((r for r in records if r.state == PhaseState.FAILED), None)
        reasons = [] if self.fate == RunState.DONE_SUCCESS else [f"run ended {self.fate.value}"]
        reasons += [
            f"tier {t.tier_id} not_clean: {'; '.join(t.cleanliness_reasons)}"
            for t in tiers
            if t.cleanliness == "not_clean"
        ]
        return run.model_copy(
            update={
                "tiers": tiers,
                "failure_reason": f"phase {failed.phase_id}: {failed.failure_reason}" if failed else None,
                "debt_status": debt_status(run.spend),
                "promotion_eligible_to_main": not reasons,
                "promotion_reasons": reasons,
            }
        )


# -- writing ----------------------------------------------------------------------------------


def _text(i: int, rel: str, item: BaseModel | str) -> str:
    if isinstance(item, str):
        return item
    if rel == "run.json" and i % 50 == 7:
        return older_schema_json(item, OLD_SCHEMA_DROPS)
    return canonical_json(item.model_dump(mode="json"))


def write_run(args: tuple[Path, int]) -> int:
    """Write run i; returns the number of files."""
    ws, i = args
    builder = RunBuilder(i)
    files = builder.build()
    run_dir = ws / "runs" / builder.run_id
    for rel, item in files.items():
        path = run_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if i == 0 and isinstance(item, BaseModel):
            write_model(path, item)  # the template run goes through the product's writer
        else:
            path.write_text(_text(i, rel, item), encoding="utf-8")
    return len(files)


def generate(ws: Path, n: int, procs: int) -> tuple[int, float]:
    if ws.exists():
        shutil.rmtree(ws)
    (ws / "runs").mkdir(parents=True)
    started = time.perf_counter()
    with Pool(procs) as pool:
        files = sum(pool.imap_unordered(write_run, [(ws, i) for i in range(n)], chunksize=64))
    (ws / ".bench-complete").write_text(f"{n}\n")
    return files, time.perf_counter() - started


def validate_sample(ws: Path, n: int) -> int:
    """Re-read a sample of runs with the product's validating reader (every artifact kind)."""
    from pipeline.core.jsonio import read_model
    from pipeline.models.issues import RunIssueIndex

    kinds: dict[str, type[BaseModel]] = {
        "run.json": RunRecord,
        "run_issue_index.json": RunIssueIndex,
        "phase.json": PhaseRecord,
        "issues.json": PhaseIssueFile,
        "builder.json": AttemptRecord,
        "ci.json": CiReport,
    }
    checked = 0
    for i in sorted({0, 7, n // 2, n - 1}):
        for path in (ws / "runs" / f"r{i:05d}").rglob("*.json"):
            read_model(path, kinds[path.name])
            checked += 1
        for line in (ws / "runs" / f"r{i:05d}" / "events.jsonl").read_text().splitlines():
            Event.model_validate_json(line)
    return checked


# -- measuring --------------------------------------------------------------------------------


def timed_cli(ws: Path, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ws, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(args)}` failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return elapsed, proc.stdout.strip()


def report_times(ws: Path) -> dict[str, float]:
    shutil.rmtree(ws / "reports", ignore_errors=True)
    for db in ws.glob(".doit.db*"):
        db.unlink()
    index = ws / "reports" / "index.md"
    cold, _ = timed_cli(ws, "report")
    mtime = index.stat().st_mtime_ns
    warm, _ = timed_cli(ws, "report")
    assert index.stat().st_mtime_ns == mtime, "an up-to-date report was rebuilt"
    run_json = ws / "runs" / "r00003" / "run.json"
    os.utime(run_json, ns=(time.time_ns(), time.time_ns()))
    incremental, out = timed_cli(ws, "report")
    assert "1 re-read" in out, out
    # `python -m pipeline forget` forgets, then pipeline.commands.cli crashes on doit's None exit code:
    # forget through doit's own state file instead (the same effect).
    for db in ws.glob(".doit.db*"):
        db.unlink()
    forced, out = timed_cli(ws, "report")
    assert "0 re-read" in out, out
    startup, _ = timed_cli(ws, "list")
    return {"cold": cold, "warm": warm, "incremental": incremental, "forced": forced, "startup": startup}


BACKLOG_SQL = """
SELECT issue_key, count(DISTINCT run_id) AS runs, sum(occurrence_count) AS occurrences
FROM run_issues GROUP BY issue_key ORDER BY runs DESC, occurrences DESC, issue_key LIMIT 20
"""


def python_backlog(ws: Path) -> list[tuple[str, int, int]]:
    runs: dict[str, set[str]] = {}
    occurrences: Counter[str] = Counter()
    for entry in os.scandir(ws / "runs"):
        try:
            with open(os.path.join(entry.path, "run_issue_index.json"), encoding="utf-8") as f:
                index = json.load(f)
        except FileNotFoundError:
            continue
        for key, item in index["issues_by_key"].items():
            runs.setdefault(key, set()).add(index["run_id"])
            occurrences[key] += item["occurrence_count"]
    rows = [(key, len(ids), occurrences[key]) for key, ids in runs.items()]
    rows.sort(key=lambda r: (-r[1], -r[2], r[0]))
    return rows[:20]


def best_of(n: int, fn: Any) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(n):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def query_times(ws: Path) -> dict[str, float]:
    from pipeline.store import rollup as duck

    def setup_and_query() -> list[tuple[Any, ...]]:
        # what `doit sql` does: check for changed runs (none), define the views, query
        with duck.connect(ws, query=BACKLOG_SQL) as con:
            return [tuple(r) for r in con.sql(BACKLOG_SQL).fetchall()]

    def live() -> list[tuple[Any, ...]]:
        with duck.connect(ws, rollup=False, query=BACKLOG_SQL) as con:
            return [tuple(r) for r in con.sql(BACKLOG_SQL).fetchall()]

    cwd = Path.cwd()
    os.chdir(ws)
    try:
        t_setup, a = best_of(3, setup_and_query)
        t_live, b = best_of(3, live)
        with duck.connect(ws, query=BACKLOG_SQL) as con:
            t_query, d = best_of(3, lambda: [tuple(r) for r in con.sql(BACKLOG_SQL).fetchall()])
    finally:
        os.chdir(cwd)
    t_py, c = best_of(3, lambda: python_backlog(ws))
    assert a == b == c == d, f"the answers differ:\n{a[:3]}\n{b[:3]}\n{c[:3]}\n{d[:3]}"
    return {"query": t_query, "setup": t_setup, "live": t_live, "python": t_py}


def backlog_time(ws: Path) -> float:
    """What start_run pays for the backlog when another run recorded issues (one try),
    after one run changed since the last report (the rollup re-reads that run). The
    workspace's ruleset is loaded first, as start_run has it before (its thresholds)."""
    from pipeline.config.workspace import Workspace
    from pipeline.issues import backlog

    workspace = Workspace(ws)
    assert workspace.ruleset.ruleset is not None
    run_json = ws / "runs" / "r00005" / "run.json"
    os.utime(run_json, ns=(time.time_ns(), time.time_ns()))
    started = time.perf_counter()
    if backlog.other_runs_have_issues(ws, "no-such-run"):
        backlog.derive_backlog(workspace)
    return time.perf_counter() - started


def issue_table(n: int, times: dict[str, float], queries: dict[str, float], backlog_s: float) -> str:
    """issue 15's figures measured here: figure | now | target (met or NOT met)."""
    rows = [
        (
            f"cold `doit report` ({n} runs)",
            f"{times['cold']:.2f} s",
            f"<= {TARGET_COLD_S:g} s",
            times["cold"] <= TARGET_COLD_S,
        ),
        (
            "one run changed -> report",
            f"{times['incremental']:.2f} s",
            f"<= {TARGET_ONE_CHANGED_S:g} s",
            times["incremental"] <= TARGET_ONE_CHANGED_S,
        ),
        (
            "`doit sql` one query incl. its staleness check",
            f"{ms(queries['setup'])} (plain Python json.load loop: {ms(queries['python'])}, "
            f"{queries['python'] / queries['setup']:.1f}x)",
            f"<= {ms(TARGET_SQL_S)}, >= {TARGET_RATIO:g}x",
            queries["setup"] <= TARGET_SQL_S and queries["python"] / queries["setup"] >= TARGET_RATIO,
        ),
        (
            "backlog derivation at start_run",
            f"{backlog_s:.2f} s",
            f"<= {TARGET_BACKLOG_S:g} s",
            backlog_s <= TARGET_BACKLOG_S,
        ),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'figure':<{width}}  {'now':<52}  target", f"{'-' * width}  {'-' * 52}  {'-' * 18}"]
    lines += [f"{f:<{width}}  {now:<52}  {t} {met(ok)}" for f, now, t, ok in rows]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def workspaces(root: Path, sizes: list[int], regenerate: bool, procs: int) -> Iterator[tuple[int, Path]]:
    for n in sizes:
        ws = root / f"ws-{n}"
        marker = ws / ".bench-complete"
        if regenerate or not marker.exists() or marker.read_text().strip() != str(n):
            print(f"generating {n} runs in {ws} ...", flush=True)
            files, seconds = generate(ws, n, procs)
            print(f"  {files} files in {seconds:.1f} s; sample re-read and validated: {validate_sample(ws, n)} files")
        else:
            print(f"reusing {ws} ({n} runs; --regenerate to rebuild it)")
        yield n, ws


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, nargs="+", default=[1000, 10000])
    shm = Path("/dev/shm")
    default_root = (shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())) / "autopack-bench"
    parser.add_argument("--root", type=Path, default=default_root)
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--no-backlog",
        dest="backlog",
        action="store_false",
        help="skip timing the backlog derivation (DuckDB over every issues.json and ci.json: ~10 s at 10,000 runs)",
    )
    args = parser.parse_args()
    results = []
    for n, ws in workspaces(args.root, args.runs, args.regenerate, args.procs):
        times = report_times(ws)
        queries = query_times(ws)
        backlog_s = backlog_time(ws) if args.backlog else float("nan")
        results.append((n, times, queries, backlog_s))
        print(f"\n{n} runs x {PHASES} phases ({ws})")
        print(
            f"  doit report: cold {times['cold']:.2f} s (rollup built), warm (up to date) {times['warm']:.2f} s, "
            f"one run changed {times['incremental']:.2f} s, forced rebuild with a current rollup "
            f"{times['forced']:.2f} s  [python -m pipeline start-up: {times['startup']:.2f} s]"
        )
        print("  backlog query (top 20 issue keys by distinct runs):")
        print(f"    duckdb, the query on an open connection over the rollup: {ms(queries['query'])}")
        print(f"    duckdb, with doit sql's setup (check for changed runs, define views): {ms(queries['setup'])}")
        print(f"    duckdb over the run_issue_index.json files directly: {ms(queries['live'])}")
        print(f"    plain python, json.load of the same files in a loop: {ms(queries['python'])}")
    print("\ntargets")
    for n, times, queries, backlog_s in results:
        print(
            f"\nissue 15's figures, {n} runs (this run, {os.cpu_count()} cores, "
            f"load average {os.getloadavg()[0]:.1f}):\n"
        )
        print(issue_table(n, times, queries, backlog_s))
    print()
    for n, times, queries, _ in results:
        if n == 10000:
            print(
                f"  full report over 10,000 runs under {TARGET_REPORT_S:.0f} s: cold {times['cold']:.2f} s "
                f"{met(times['cold'] < TARGET_REPORT_S)}; from a current rollup {times['forced']:.2f} s "
                f"{met(times['forced'] < TARGET_REPORT_S)}"
            )
        for key, what in (
            ("query", "the query over the rollup"),
            ("setup", "with doit sql's setup"),
            ("live", "over the files directly"),
        ):
            ratio = queries["python"] / queries[key]
            print(
                f"  {n} runs: duckdb >= {TARGET_RATIO:.0f}x faster than plain python, {what}: {ratio:.1f}x "
                f"{met(ratio >= TARGET_RATIO)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
