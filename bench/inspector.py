"""How fast and how big the run inspector's page is for a large run: 25 phases x 3 attempts.

    .venv/bin/python bench/inspector.py [--phases 25] [--attempts 3] [--repeat 5] [--root DIR]

It runs the demo once (a real run, so every artifact has the shape the supervisor
writes), then builds a run of N phases in 5 tiers from the demo's P1.2 files: every
attempt has builder.json, result.json, gate.json, a patch.diff of ~30 KB, and a CI run of
3 tries whose logs are ~40 KB; one final diff is 5 MB and one log 20 MB (they must be
truncated, not inlined). run.json, strategy.json and a hash-chained events.jsonl (spread
over two hours of wall time) are written to match.

Then it times `write_inspect` (read + render + atomic write; best and median of
--repeat) and prints the page's size. Targets (reported, never failed on): under 1 s and
under 2 MB.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.commands.demo import run_demo
from pipeline.reporting.inspect.page import write_inspect
from pipeline.store.events import EventLog

TIERS = 5
START = dt.datetime(2026, 12, 4, 10, 0, 0, tzinfo=dt.UTC)


def _ts(seconds: float) -> str:
    return (START + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def _dump(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _diff(k: int, size: int) -> str:
    lines = [f"diff --git a/src/mod{k}.py b/src/mod{k}.py", "--- a/src/mod{k}.py", f"+++ b/src/mod{k}.py"]
    n = 0
    while sum(len(x) + 1 for x in lines) < size:
        lines.append(f"@@ -{n},3 +{n},4 @@ def f{n}():" if n % 20 == 0 else "")
        lines += [f"-    value = compute({n}, 'old')", f"+    value = compute({n}, 'new')", f"     return value + {n}"]
        n += 1
    return "\n".join(lines) + "\n"


def _log(size: int) -> str:
    line = "tests/test_mod.py::test_case_{} PASSED                                              [ 42%]\n"
    return "".join(line.format(i) for i in range(size // len(line) + 1))


def build(template: Path, out: Path, phases: int, attempts: int) -> Path:
    run_dir = out / "runs" / "big"
    src = template / "phases" / "02-P1.2"
    builder, result = _load(src / "attempts/1/builder.json"), _load(src / "attempts/1/result.json")
    gate, ci = _load(src / "attempts/1/gate.json"), _load(src / "ci/1/ci.json")
    run, strategy = _load(template / "run.json"), _load(template / "strategy.json")
    phase_record = _load(src / "phase.json")
    events = EventLog(run_dir / "events.jsonl")
    run_dir.mkdir(parents=True)
    clock = 0.0
    summaries, phase_strats = [], []
    events.append("run", "big", "PLAN_BOOTSTRAP", "RUN_CREATED", ts=_ts(clock))
    for i in range(1, phases + 1):
        pid, tier = f"P{i}", f"T{(i - 1) * TIERS // phases + 1}"
        pdir = run_dir / "phases" / f"{i:02d}-{pid}"
        records = []
        for k in range(1, attempts + 1):
            final = k == attempts
            adir = pdir / "attempts" / str(k)
            before = "QUEUED" if k == 1 else "CI_RUNNING"
            events.append("phase", pid, before, "EXECUTING", {"attempt": k}, ts=_ts(clock))
            clock += 60
            events.append("phase", pid, "EXECUTING", "GATE", {"attempt": k}, ts=_ts(clock))
            clock += 5
            events.append("phase", pid, "GATE", "CI_RUNNING", {"attempt": k}, ts=_ts(clock))
            clock += 30
            rec = {**builder, "k": k, "outcome": "passed" if final else "ci_failed", "started_at": _ts(clock - 95)}
            records.append(rec)
            _dump(adir / "builder.json", rec)
            _dump(adir / "result.json", result)
            _dump(adir / "gate.json", {**gate, "phase_id": pid, "attempt": k})
            huge = i == phases // 2 and final
            (adir / "patch.diff").write_text(_diff(k, 5_000_000 if huge else 30_000))
            cdir = pdir / "ci" / str(k)
            report = copy.deepcopy(ci)
            report.update({"phase_id": pid, "attempt": k, "verdict": "pass" if final else "fail"})
            _dump(cdir / "ci.json", report)
            for t in range(1, 4):
                (cdir / f"try{t}-tests.log").write_text(_log(20_000_000 if i == 3 and t == 3 else 40_000))
        events.append("phase", pid, "CI_RUNNING", "COMPLETE", {"tag": f"autonomous/big/{pid}"}, ts=_ts(clock))
        _dump(pdir / "phase.json", {**phase_record, "phase_id": pid, "tier_id": tier, "index": i, "attempts": records})
        (pdir / "spec.md").write_text((src / "spec.md").read_text())
        _dump(pdir / "issues.json", _load(src / "issues.json"))
        summaries.append({**run["phases"][1], "phase_id": pid, "tier_id": tier, "index": i, "attempts": attempts})
        phase_strats.append({**strategy["phases"][1], "phase_id": pid, "tier_id": tier, "index": i})
    tiers = sorted({s["tier_id"] for s in summaries})
    run.update(
        run_id="big",
        phases=summaries,
        tiers=[{**run["tiers"][0], "tier_id": t} for t in tiers],
        events_count=events.head[0],
        events_head=events.head[1],
    )
    strategy.update(
        phases=phase_strats,
        tiers=[
            {**strategy["tiers"][0], "tier_id": t, "phase_ids": [s["phase_id"] for s in summaries if s["tier_id"] == t]}
            for t in tiers
        ],
    )
    _dump(run_dir / "run.json", run)
    _dump(run_dir / "strategy.json", strategy)
    _dump(run_dir / "run_issue_index.json", _load(template / "run_issue_index.json"))
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", type=int, default=25)
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--root", type=Path, default=None)
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="autopack-bench-inspect-"))
    demo = run_demo(root=root / "demo", quiet=True)
    run_dir = build(demo.workspace / "runs" / "demo", root / "big", args.phases, args.attempts)
    on_disk = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
    times = []
    for _ in range(args.repeat):
        began = time.perf_counter()
        page = write_inspect(run_dir)
        times.append(time.perf_counter() - began)
    size = page.stat().st_size
    print(f"run: {args.phases} phases x {args.attempts} attempts, {on_disk / 1e6:.1f} MB on disk ({run_dir})")
    print(f"write_inspect: best {min(times):.3f} s, median {statistics.median(times):.3f} s (target < 1 s)")
    print(f"page: {size / 1e6:.2f} MB (target < 2 MB): {page}")


if __name__ == "__main__":
    main()
