"""`events.jsonl`: one canonical JSON object per line, each carrying the sha256 of the previous
line, so an edit, a truncation or a torn write is detectable (`verify`). Appends are fsynced
(a writer may append a group of events and fsync once, `append(sync=False)` then `sync()`);
a line torn by a crash mid-append is removed by the next append (`repair_torn_tail`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.core.errors import IntegrityError, InvalidInput
from pipeline.core.jsonio import fsync_dir, json_path, validation_problems, write_all
from pipeline.models.base import ID_PATTERN, ref_problem
from pipeline.models.events import Event

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()




_TAIL_CHUNK = 64 * 1024


def utc_now() -> str:
    """Now as ISO-8601 UTC with a Z suffix, to the second: 2026-11-21T12:00:00Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_id(value: object, what: str) -> str:
    """`value` if it is a valid run/tier/phase id, else InvalidInput (before any path use)."""
    if not isinstance(value, str) or re.fullmatch(ID_PATTERN, value) is None:
        raise InvalidInput(
            f"invalid {what} {value!r}: must match {ID_PATTERN} (1-64 characters: letters, "
            "digits, '.', '_', '-'; starting with a letter or digit)",
            f"choose a {what} such as 'add-jitter'",
        )
    problem = ref_problem(value)
    if problem:
        raise InvalidInput(
            f"invalid {what} {value!r}: it {problem}, so git cannot use it in a branch or tag name",
            f"choose a {what} such as 'add-jitter'",
        )
    return value


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def event_line(event: Event) -> bytes:
    """The canonical single-line form of an event (without the newline)."""
    text = json.dumps(
        event.model_dump(mode="json"),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return text.encode("utf-8")


class EventLog:
    """`runs/<run_id>/events.jsonl`: append-only, hash-chained, one event per line."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # (seq, sha256) of the last line and the file size they were read at: an append
        # re-reads the tail only when the file changed behind this instance's back.
        self._tail: tuple[int, str] | None = None
        self._size: int | None = None
        self._unsynced = False  # appended with sync=False and not fsynced since

    def __repr__(self) -> str:
        return f"EventLog({str(self.path)!r})"

    # -- writing ---------------------------------------------------------------------

    def append(
        self,
        kind: str,
        entity: str,
        from_state: str | None = None,
        to_state: str | None = None,
        data: dict[str, Any] | None = None,
        *,
        ts: str | None = None,
        sync: bool = True,
    ) -> Event:
        """Append one event (fsynced, or with `sync=False` left to `sync()`) and return it.

        A torn last line left by a crash is removed first; seq and prev_sha256 continue
        from the last complete line.
        """
        created = not self.path.exists()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except IsADirectoryError:
            raise self._not_a_file() from None
        except FileNotFoundError:  # a new run directory
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = True
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._repair_fd(fd)
            size = os.fstat(fd).st_size
            if self._tail is None or self._size != size:
                self._tail = self._read_tail(fd, size)
            last_seq, prev = self._tail
            try:
                event = Event(
                    seq=last_seq + 1,
                    ts=ts if ts is not None else utc_now(),
                    kind=kind,
                    entity=entity,
                    from_state=None if from_state is None else str(from_state),
                    to_state=None if to_state is None else str(to_state),
                    data=data or {},
                    prev_sha256=prev,
                )
            except ValidationError as exc:
                raise InvalidInput(
                    "cannot record event: " + "; ".join(validation_problems(self.path, exc)),
                    "pass JSON-compatible data and an ISO-8601 UTC timestamp",
                ) from exc
            line = event_line(event)
            write_all(fd, line + b"\n")
            if sync:
                os.fsync(fd)
            self._unsynced = not sync
            self._tail = (event.seq, _sha256(line))
            self._size = size + len(line) + 1
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.path.parent)
        return event

    def sync(self) -> None:
        """fsync what `append(sync=False)` left unsynced (nothing to do otherwise)."""
        if not self._unsynced:
            return
        self._unsynced = False
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:  # removed since (a start_run starting over): nothing to keep
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def repair_torn_tail(self) -> bool:
        """Remove an incomplete last line (no trailing newline). True if one was removed."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        except IsADirectoryError:
            raise self._not_a_file() from None
        try:
            return self._repair_fd(fd)
        finally:
            os.close(fd)

    def _repair_fd(self, fd: int) -> bool:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return False
        pos = size
        keep = 0
        while pos > 0:
            start = max(0, pos - _TAIL_CHUNK)
            chunk = os.pread(fd, pos - start, start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        os.ftruncate(fd, keep)
        os.fsync(fd)
        self._tail = None
        self._size = None
        return True

    def _read_tail(self, fd: int, size: int) -> tuple[int, str]:
        """(seq, sha256) of the last complete line, reading only the end of the file."""
        if size == 0:
            return 0, EMPTY_SHA256
        end = size - 1  # the final newline
        buf = b""
        pos = end
        line: bytes | None = None
        while pos > 0:
            start = max(0, pos - _TAIL_CHUNK)
            buf = os.pread(fd, pos - start, start) + buf
            pos = start
            i = buf.rfind(b"\n")
            if i >= 0:
                line = buf[i + 1 :]
                break
        if line is None:
            line = buf
        try:
            event = Event.model_validate_json(line)
        except ValidationError as exc:
            raise IntegrityError(
                f"{self.path}: the last line is not a valid event ({exc.error_count()} "
                "problem(s)); refusing to append after it",
                f"run verify on {self.path} to locate the damage; restore the file from git",
            ) from exc
        return event.seq, _sha256(line)

    @property
    def head(self) -> tuple[int, str]:
        """(seq, sha256) of the last complete line; (0, sha256 of nothing) for an empty log."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return 0, EMPTY_SHA256
        try:
            size = os.fstat(fd).st_size
            if self._tail is None or self._size != size:
                self._tail = self._read_tail(fd, size)
                self._size = size
            return self._tail
        except IsADirectoryError:
            raise self._not_a_file() from None
        finally:
            os.close(fd)

    def _not_a_file(self) -> InvalidInput:
        return InvalidInput(
            f"{self.path}: the event log is a directory, not a file",
            f"restore {self.path} from git (`git checkout -- {self.path}`) or remove the directory",
        )

    # -- reading ---------------------------------------------------------------------

    def _lines(self) -> tuple[list[bytes], bytes | None]:
        """The complete lines (without newlines) and a torn last fragment, if any."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return [], None
        except IsADirectoryError:
            raise self._not_a_file() from None
        parts = raw.split(b"\n")
        torn = parts.pop()  # b"" when the file ends with a newline (or is empty)
        return parts, (torn or None)

    def _parse(self, lineno: int, line: bytes) -> Event:
        where = f"{self.path}:{lineno}"
        fix = f"restore {self.path} from git; events.jsonl must never be edited by hand"
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"{where}: not valid JSON ({exc})", fix) from exc
        try:
            return Event.model_validate(obj)
        except ValidationError as exc:
            problems = "; ".join(f"{json_path(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))
            raise IntegrityError(f"{where}: not a valid event: {problems}", fix) from exc

    def read(self) -> list[Event]:
        """Every complete event, in order. A torn last fragment is not an event (skipped)."""
        lines, _ = self._lines()
        return [self._parse(i, line) for i, line in enumerate(lines, 1)]

    def verify(self, expected_count: int | None = None, expected_head: str | None = None) -> str:
        """Check the hash chain; return the head hash (sha256 of the last line).

        `expected_count` / `expected_head` are what run.json recorded: the log must hold at
        least that many lines and the line at `expected_count` must hash to
        `expected_head` (without a count, the last line must). The head of an empty log
        is sha256(b"").
        """
        if expected_count is not None and expected_count < 0:
            raise ValueError(f"expected_count must be >= 0, not {expected_count}")
        lines, torn = self._lines()
        fix = f"restore {self.path} from git; events.jsonl must never be edited by hand"
        if torn is not None:
            raise IntegrityError(
                f"{self.path}:{len(lines) + 1}: incomplete last line (no trailing newline), "
                "left by a process killed mid-append",
                "the next append removes it automatically (EventLog.repair_torn_tail); "
                "nothing recorded before it is lost",
            )
        hashes: list[str] = []
        prev = EMPTY_SHA256
        for lineno, line in enumerate(lines, 1):
            event = self._parse(lineno, line)
            if event.seq != lineno:
                raise IntegrityError(
                    f"{self.path}:{lineno}: seq is {event.seq}, expected {lineno} "
                    "(lines were removed, inserted or reordered)",
                    fix,
                )
            if event.prev_sha256 != prev:
                if lineno == 1:
                    msg = (
                        f"{self.path}:1: prev_sha256 of the first event is not sha256 of "
                        "the empty string (the beginning of the log was edited or removed)"
                    )
                else:
                    msg = (
                        f"{self.path}:{lineno - 1}: line was edited (its sha256 no longer "
                        f"matches the prev_sha256 recorded at line {lineno})"
                    )
                raise IntegrityError(msg, fix)
            prev = _sha256(line)
            hashes.append(prev)
        if expected_count is not None:
            if len(lines) < expected_count:
                raise IntegrityError(
                    f"{self.path}:{len(lines)}: the log has {len(lines)} events but run.json "
                    f"records {expected_count}: it was truncated",
                    fix,
                )
            at = hashes[expected_count - 1] if expected_count > 0 else EMPTY_SHA256
            if expected_head is not None and at != expected_head:
                raise IntegrityError(
                    f"{self.path}:{expected_count}: line was edited (its sha256 does not "
                    "match the head recorded in run.json)",
                    fix,
                )
        elif expected_head is not None and prev != expected_head:
            raise IntegrityError(
                f"{self.path}:{len(lines)}: the last line's sha256 does not match the "
                "expected head (edited or truncated)",
                fix,
            )
        return prev
