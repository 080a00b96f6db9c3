"""Reading a run directory for the run inspector, tolerantly (layer L4; reporting/ after
the restructure).

The inspector shows whatever a run left, including a run that crashed, was killed, or
whose files were edited by hand: every artifact may be missing or malformed. So it does
not validate against the models (one wrong field would hide a whole file); it reads plain
JSON, notes each file it could not read in `RunFiles.problems`, and hands the page typed
getters (`text`, `num`, `items`, `obj`) that turn a wrong type into "absent".

Everything read here came from agents, patches, CI tools or the supervisor's record of
them: every string is masked (`pipeline.core.masking`) as it is read, so nothing later can
forget to. Large text files (diffs, logs) are read in part only: the head of a diff, the
tail of a log.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.errors import AutopackError
from pipeline.core.jsonio import read_json
from pipeline.core.masking import MIN_SECRET_LENGTH, mask_text, secret_values

BACKLOG = Path("reports") / "project_issue_backlog.json"
_PHASE_DIR = re.compile(r"^(\d+)-([A-Za-z0-9][A-Za-z0-9._-]{0,63})$")
Masker = Callable[[str], str]


def make_masker(env: dict[str, str] | None = None) -> Masker:
    values = secret_values(env)

    def mask(text: str) -> str:
        return mask_text(text, values)[0] if len(text) >= MIN_SECRET_LENGTH else text

    return mask


def _masked(value: Any, mask: Masker) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {mask(str(k)): _masked(v, mask) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, mask) for v in value]
    return value


# -- typed getters: a wrong type is an absent value ---------------------------------------


def obj(data: Any, *keys: str) -> dict[str, Any]:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}


def items(data: Any, key: str) -> list[Any]:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, list) else []


def text(data: Any, key: str, default: str = "") -> str:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) else default


def num(data: Any, key: str) -> float | None:
    value = data.get(key) if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


# -- files --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Excerpt:
    """Part of a text file: `text` is its head (diffs) or tail (logs); `size` its bytes."""

    rel: str
    text: str
    size: int
    truncated: bool


@dataclass
class Attempt:
    k: int
    rel: str
    builder: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    patch: Excerpt | None = None


@dataclass
class CiRun:
    k: int
    rel: str
    report: dict[str, Any]
    log_tail: Excerpt | None = None


@dataclass
class Phase:
    index: int
    phase_id: str
    rel: str
    record: dict[str, Any] = field(default_factory=dict)
    spec: Excerpt | None = None
    gate: dict[str, Any] = field(default_factory=dict)
    issues: dict[str, Any] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    ci: list[CiRun] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunFiles:
    run_dir: Path
    run: dict[str, Any] = field(default_factory=dict)
    strategy: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    chain: tuple[bool, str] = (False, "not checked")
    issue_index: dict[str, Any] = field(default_factory=dict)
    incident: dict[str, Any] = field(default_factory=dict)
    incident_files: list[str] = field(default_factory=list)
    backlog: dict[str, Any] = field(default_factory=dict)
    phases: list[Phase] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class _Reader:
    def __init__(self, run_dir: Path, mask: Masker, limits: Limits) -> None:
        self.run_dir = run_dir
        self.mask = mask
        self.limits = limits
        self.problems: list[str] = []

    def rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.run_dir).as_posix()
        except ValueError:
            return path.as_posix()

    def json(self, path: Path, required: bool = True) -> dict[str, Any]:
        """The JSON object at `path`, masked; {} (and a problem noted) when unreadable."""
        if not path.exists():
            if required:
                self.problems.append(f"{self.rel(path)}: missing")
            return {}
        try:
            data = read_json(path)
        except AutopackError as exc:
            self.problems.append(f"{self.rel(path)}: unreadable ({_short(exc.message, path)})")
            return {}
        except OSError as exc:
            self.problems.append(f"{self.rel(path)}: unreadable ({exc.strerror or exc})")
            return {}
        if not isinstance(data, dict):
            self.problems.append(f"{self.rel(path)}: malformed (a JSON {type(data).__name__}, expected an object)")
            return {}
        masked: dict[str, Any] = _masked(data, self.mask)
        return masked

    def excerpt(self, path: Path, limit: int, tail: bool = False) -> Excerpt | None:
        """The first (or last) `limit` bytes of a text file, masked; None when absent."""
        try:
            with path.open("rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if tail and size > limit:
                    fh.seek(size - limit)
                raw = fh.read(limit)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.problems.append(f"{self.rel(path)}: unreadable ({exc.strerror or exc})")
            return None
        body = raw.decode("utf-8", errors="replace")
        truncated = size > limit
        if truncated:  # whole lines only: a cut line could hold part of a secret, unmasked
            cut = body.split("\n", 1) if tail else body.rsplit("\n", 1)
            body = (cut[-1] if tail else cut[0]) if len(cut) == 2 else ""
        return Excerpt(self.rel(path), self.mask(body), size, truncated)


def _short(message: str, path: Path) -> str:
    return message.replace(f"{path}:", "").replace(str(path), "").strip(": ") or message


@dataclass(frozen=True)
class Limits:
    """Bytes of a text file the page shows (the rest is linked)."""

    diff_final: int = 48_000
    diff_superseded: int = 12_000
    log_tail: int = 4_000
    spec: int = 12_000

    @classmethod
    def for_run(cls, final: int, superseded: int, ci_runs: int, phases: int) -> Limits:
        """Shares of a page-wide budget (the page stays under 2 MB however big the run):
        a final attempt's diff gets three times a superseded one's."""
        unit = DIFF_BUDGET / max(3 * final + superseded, 1)
        return cls(
            diff_final=_clamp(3 * unit, 4_000, cls.diff_final),
            diff_superseded=_clamp(unit, 1_500, cls.diff_superseded),
            log_tail=_clamp(LOG_BUDGET / max(ci_runs, 1), 1_000, cls.log_tail),
            spec=_clamp(SPEC_BUDGET / max(phases, 1), 2_000, cls.spec),
        )


DIFF_BUDGET, LOG_BUDGET, SPEC_BUDGET = 500_000, 200_000, 150_000


def _clamp(value: float, low: int, high: int) -> int:
    return int(min(max(value, low), high))


def _numbered_dirs(parent: Path) -> list[tuple[int, Path]]:
    if not parent.is_dir():
        return []
    found = [(int(p.name), p) for p in parent.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(found)


def _phase_dirs(run_dir: Path) -> list[tuple[int, str, Path]]:
    root = run_dir / "phases"
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _PHASE_DIR.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), match.group(2), entry))
    return sorted(found)


def _read_phase(reader: _Reader, index: int, phase_id: str, pdir: Path, final_attempt: int | None) -> Phase:
    phase = Phase(index, phase_id, reader.rel(pdir))
    phase.record = reader.json(pdir / "phase.json")
    phase.spec = reader.excerpt(pdir / "spec.md", reader.limits.spec)
    phase.gate = reader.json(pdir / "gate.json", required=False)
    phase.issues = reader.json(pdir / "issues.json", required=False)
    dirs = _numbered_dirs(pdir / "attempts")
    last = final_attempt or (dirs[-1][0] if dirs else 0)
    for k, adir in dirs:
        attempt = Attempt(k, reader.rel(adir))
        attempt.builder = reader.json(adir / "builder.json")
        attempt.result = reader.json(adir / "result.json", required=False)
        attempt.gate = reader.json(adir / "gate.json", required=False)
        limit = reader.limits.diff_final if k == last else reader.limits.diff_superseded
        attempt.patch = reader.excerpt(adir / "patch.diff", limit)
        phase.attempts.append(attempt)
    for k, cdir in _numbered_dirs(pdir / "ci"):
        report = reader.json(cdir / "ci.json")
        phase.ci.append(CiRun(k, reader.rel(cdir), report, _failing_log(reader, cdir, report)))
    for _k, audit_dir in _numbered_dirs(pdir / "audit"):
        audit = reader.json(audit_dir / "auditor.json")
        if audit:
            phase.audits.append({**audit, "_rel": reader.rel(audit_dir)})
    return phase


def _failing_log(reader: _Reader, cdir: Path, report: dict[str, Any]) -> Excerpt | None:
    """The tail of the log of the last try's first failing step (or its last step)."""
    tries = [t for t in items(report, "tries") if isinstance(t, dict)]
    if not tries:
        return None
    steps = [s for s in items(tries[-1], "steps") if isinstance(s, dict)]
    failing = [s for s in steps if num(s, "returncode") not in (0.0, None) or s.get("timed_out") is True]
    step = (failing or steps or [{}])[0]
    name = text(step, "log")
    if not name or "/" in name or name.startswith("."):
        return None
    return reader.excerpt(cdir / name, reader.limits.log_tail, tail=True)


def _read_events(reader: _Reader, path: Path) -> list[dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        reader.problems.append("events.jsonl: missing")
        return []
    except OSError as exc:
        reader.problems.append(f"events.jsonl: unreadable ({exc.strerror or exc})")
        return []
    events, bad = [], 0
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(event, dict):
            events.append(_masked(event, reader.mask))
        else:
            bad += 1
    if bad:
        reader.problems.append(f"events.jsonl: {bad} line(s) are not JSON objects (skipped)")
    return events


def _chain(run_dir: Path, run: dict[str, Any]) -> tuple[bool, str]:
    from pipeline.store.events import EventLog

    path = run_dir / "events.jsonl"
    if not path.exists():
        return False, "events.jsonl is missing"
    count = num(run, "events_count")
    head = text(run, "events_head") or None
    try:
        EventLog(path).verify(int(count) if count is not None and count >= 0 else None, head)
    except AutopackError as exc:
        return False, exc.message.replace(str(run_dir) + os.sep, "")
    except OSError as exc:
        return False, f"events.jsonl unreadable ({exc.strerror or exc})"
    where = "the head recorded in run.json" if head else "its own lines (run.json records no head)"
    return True, f"the hash chain of {len(path.read_bytes().splitlines())} event(s) verifies against {where}"


def _final_attempts(run: dict[str, Any]) -> dict[str, int]:
    return {text(p, "phase_id"): int(num(p, "attempts") or 0) for p in items(run, "phases") if isinstance(p, dict)}


def _limits(run_dir: Path) -> Limits:
    """Limits for the number of attempts and CI runs found (directory listings only)."""
    phases = _phase_dirs(run_dir)
    final = superseded = ci_runs = 0
    for _index, _pid, pdir in phases:
        attempts = len(_numbered_dirs(pdir / "attempts"))
        final += 1 if attempts else 0
        superseded += max(attempts - 1, 0)
        ci_runs += len(_numbered_dirs(pdir / "ci"))
    return Limits.for_run(final, superseded, ci_runs, len(phases))


def read_run(run_dir: Path, mask: Masker | None = None, limits: Limits | None = None) -> RunFiles:
    """Everything the inspector shows of `run_dir`, with a list of what was missing."""
    run_dir = Path(run_dir)
    reader = _Reader(run_dir, mask or make_masker(), limits or _limits(run_dir))
    files = RunFiles(run_dir)
    files.run = reader.json(run_dir / "run.json")
    files.strategy = reader.json(run_dir / "strategy.json")
    files.events = _read_events(reader, run_dir / "events.jsonl")
    files.chain = _chain(run_dir, files.run)
    files.issue_index = reader.json(run_dir / "run_issue_index.json", required=False)
    files.incident = reader.json(run_dir / "incident" / "incident.json", required=False)
    incident = run_dir / "incident"
    if incident.is_dir():
        files.incident_files = sorted(p.name for p in incident.iterdir() if p.is_file())
    workspace_backlog = run_dir.parent.parent / BACKLOG
    if workspace_backlog.is_file():
        files.backlog = reader.json(workspace_backlog)
    finals = _final_attempts(files.run)
    for index, phase_id, pdir in _phase_dirs(run_dir):
        files.phases.append(_read_phase(reader, index, phase_id, pdir, finals.get(phase_id) or None))
    files.problems = reader.problems
    return files


def phase_strategy(files: RunFiles, phase_id: str) -> dict[str, Any]:
    return next((p for p in items(files.strategy, "phases") if text(p, "phase_id") == phase_id), {})


def tier_strategy(files: RunFiles, tier_id: str) -> dict[str, Any]:
    return next((t for t in items(files.strategy, "tiers") if text(t, "tier_id") == tier_id), {})


def ordered(values: Sequence[Any]) -> list[dict[str, Any]]:
    return [v for v in values if isinstance(v, dict)]
