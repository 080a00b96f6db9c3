"""The record bound to its hash chain: what the event log says against what the files say.

Events name the artifacts their step wrote (`data.artifacts`: path relative to the run
directory -> sha256): the start names strategy.json, a phase's COMPLETE names the patch,
gate report and CI report it was accepted on. `problems` checks that every named artifact
exists with that hash, that run.json and every phase.json agree with the last event about
them (a file may lag its event by one transition: what a crash between the two leaves),
and that every phase the strategy names has its directory. Each problem names the file
and the event that disagrees.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARTIFACTS = "artifacts"


@dataclass(frozen=True)
class Told:
    """The last transition the log records for one entity."""

    seq: int
    from_state: str | None
    to_state: str | None


def file_sha256(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def artifacts(run_dir: Path, paths: Iterable[Path]) -> dict[str, str]:
    """{path relative to the run directory: sha256} of the files that exist."""
    out: dict[str, str] = {}
    for path in paths:
        digest = file_sha256(path)
        if digest is not None:
            out[str(path.relative_to(run_dir))] = digest
    return out


def read_events(events_path: Path) -> list[dict[str, Any]]:
    """The log's events as dicts (the chain itself is checked by EventLog.verify)."""
    try:
        lines = events_path.read_text(errors="replace").splitlines()
    except (FileNotFoundError, IsADirectoryError):  # a log that is a directory: EventLog reports it
        return []
    out = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            out.append(event)
    return out


def last_told(events: list[dict[str, Any]]) -> dict[tuple[str, str], Told]:
    """(kind, entity) -> the last transition of that entity ("run" or "phase")."""
    told: dict[tuple[str, str], Told] = {}
    for e in events:
        if e.get("kind") in ("run", "phase") and e.get("to_state"):
            key = (str(e["kind"]), str(e.get("entity")))
            told[key] = Told(int(e.get("seq", 0)), e.get("from_state"), e["to_state"])
    return told


def artifact_problems(run_dir: Path, events: list[dict[str, Any]]) -> list[str]:
    problems = []
    for e in events:
        data = e.get("data")
        named = data.get(ARTIFACTS) if isinstance(data, dict) else None
        if not isinstance(named, dict):
            continue
        for rel, digest in sorted(named.items()):
            path = run_dir / rel
            actual = file_sha256(path)
            if actual is None:
                problems.append(f"{path}: missing; event {e.get('seq')} ({_what(e)}) names it with sha256 {digest}")
            elif actual != digest:
                problems.append(
                    f"{path}: sha256 {actual[:12]} differs from {str(digest)[:12]} named by event "
                    f"{e.get('seq')} ({_what(e)}): the file was changed after its step wrote it"
                )
    return problems


def state_problem(path: Path, state: str, told: Told | None, entity: str) -> str | None:
    """The file's state against the last event about it; None when they agree."""
    if told is None:
        return None if state in ("QUEUED", "PLAN_BOOTSTRAP") else (
            f"{path}: state {state} but the event log records no transition of {entity}"
        )
    if state in (told.to_state, told.from_state):
        return None
    return f"{path}: state {state} disagrees with event {told.seq}, which moved {entity} to {told.to_state}"


def problems(
    run_dir: Path,
    events_path: Path,
    run_id: str,
    run_state: str,
    phase_states: Mapping[str, tuple[Path, str | None]],
) -> list[str]:
    """Everything the files and the chain disagree on. `phase_states`: phase id ->
    (its phase.json, its state or None when the file is missing)."""
    events = read_events(events_path)
    told = last_told(events)
    found = artifact_problems(run_dir, events)
    run_problem = state_problem(run_dir / "run.json", run_state, told.get(("run", run_id)), f"run {run_id}")
    found += [run_problem] if run_problem else []
    for phase_id, (path, state) in sorted(phase_states.items()):
        last = told.get(("phase", phase_id))
        if state is None:
            moved = f"; event {last.seq} moved {phase_id} to {last.to_state}" if last else ""
            found.append(f"{path}: missing{moved}")
            continue
        problem = state_problem(path, state, last, f"phase {phase_id}")
        found += [problem] if problem else []
    return found


def _what(event: dict[str, Any]) -> str:
    to = event.get("to_state")
    return f"{event.get('kind')} {event.get('entity')}" + (f" -> {to}" if to else "")


def tag_commit(common_git_dir: Path, tag: str) -> str | None:
    """The commit an annotated or lightweight tag points at, read from the repository's
    files (loose ref and object, or packed-refs' peeled line); None when it cannot tell."""
    import zlib

    loose = common_git_dir / "refs" / "tags" / tag
    sha = loose.read_text().strip() if loose.is_file() else _packed(common_git_dir, f"refs/tags/{tag}")
    if not sha:
        return None
    if sha.startswith("^"):
        return sha[1:]
    obj = common_git_dir / "objects" / sha[:2] / sha[2:]
    try:
        data = zlib.decompress(obj.read_bytes())
    except (OSError, zlib.error):
        return _packed(common_git_dir, f"refs/tags/{tag}", peeled=True) or None
    if data.startswith(b"commit "):
        return sha
    if data.startswith(b"tag "):
        body = data.split(b"\0", 1)[-1]
        first = body.split(b"\n", 1)[0]
        return first.split(b" ", 1)[1].decode() if first.startswith(b"object ") else None
    return None


def _packed(common_git_dir: Path, ref: str, peeled: bool = False) -> str | None:
    try:
        lines = (common_git_dir / "packed-refs").read_text().splitlines()
    except OSError:
        return None
    for i, line in enumerate(lines):
        if line.endswith(f" {ref}"):
            following = lines[i + 1] if i + 1 < len(lines) else ""
            if following.startswith("^"):
                return following if not peeled else following[1:]
            return line.split(" ", 1)[0]
    return None
