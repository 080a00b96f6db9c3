"""pipeline.store.rundir: the hash-chained event log, the run lock (two real processes), run paths."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.core.errors import IntegrityError, InvalidInput, RunLocked
from pipeline.models.enums import RunState
from pipeline.store.events import EMPTY_SHA256, EventLog
from pipeline.store.lock import RunLock
from pipeline.store.rundir import RunStore

REPO = Path(__file__).resolve().parents[1]
TS = "2026-11-21T12:00:00Z"


def _log_with(tmp_path: Path, n: int) -> EventLog:
    log = EventLog(tmp_path / "runs" / "r1" / "events.jsonl")
    for i in range(n):
        log.append("phase", f"F{i}", "QUEUED", "EXECUTING", {"i": i, "note": "é"}, ts=TS)
    return log


# -- event log ----------------------------------------------------------------------


def test_append_builds_the_chain(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    first = log.append("run", "r1", RunState.PLAN_BOOTSTRAP, RunState.RUN_CREATED)
    second = log.append("note", "r1", None, None, {"msg": "hello"}, ts=TS)
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_sha256 == hashlib.sha256(b"").hexdigest() == EMPTY_SHA256
    assert first.from_state == "PLAN_BOOTSTRAP" and first.to_state == "RUN_CREATED"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first.ts)
    raw = (tmp_path / "events.jsonl").read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    assert second.prev_sha256 == hashlib.sha256(lines[0]).hexdigest()
    # canonical single-line form: sorted keys, no spaces
    assert lines[1] == json.dumps(
        second.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
    ).encode()
    assert log.read() == [first, second]
    assert log.verify() == hashlib.sha256(lines[1]).hexdigest()
    assert log.verify(expected_count=2, expected_head=log.verify()) == log.verify()


def test_a_fresh_instance_continues_the_chain(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 3)
    other = EventLog(log.path)
    ev = other.append("note", "r1", ts=TS)
    assert ev.seq == 4
    # the first instance notices the file changed behind its back
    ev5 = log.append("note", "r1", ts=TS)
    assert ev5.seq == 5
    log.verify(expected_count=5)


def test_empty_or_missing_log(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    assert log.read() == []
    assert log.verify() == EMPTY_SHA256
    assert log.verify(expected_count=0, expected_head=EMPTY_SHA256) == EMPTY_SHA256
    with pytest.raises(IntegrityError, match="truncated"):
        log.verify(expected_count=1)


def test_edited_earlier_line_is_named(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 5)
    raw = log.path.read_bytes()
    lines = raw.split(b"\n")
    # flip one byte inside line 2's entity ("F1" -> "G1"): still valid JSON and a valid event
    assert b'"entity":"F1"' in lines[1]
    lines[1] = lines[1].replace(b'"entity":"F1"', b'"entity":"G1"')
    log.path.write_bytes(b"\n".join(lines))
    with pytest.raises(IntegrityError) as info:
        log.verify()
    assert "events.jsonl:2: line was edited" in info.value.message
    assert "line 3" in info.value.message
    assert info.value.fix


def test_edited_last_line_is_caught_by_the_recorded_head(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 3)
    head = log.verify()
    log.path.write_bytes(log.path.read_bytes().replace(b'"entity":"F2"', b'"entity":"X2"'))
    log.verify()  # nothing after it: only the recorded head can tell
    with pytest.raises(IntegrityError, match=r"events\.jsonl:3: line was edited"):
        log.verify(expected_count=3, expected_head=head)


def test_invalid_line_and_bad_seq_are_named(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 3)
    good = log.path.read_bytes()
    lines = good.split(b"\n")
    log.path.write_bytes(b"\n".join([lines[0], b"{not json", *lines[2:]]))
    with pytest.raises(IntegrityError, match=r"events\.jsonl:2: not valid JSON"):
        log.verify()
    with pytest.raises(IntegrityError, match=r"events\.jsonl:2: not valid JSON"):
        log.read()
    log.path.write_bytes(b"\n".join([lines[0], b'{"seq": 2}', *lines[2:]]))
    with pytest.raises(IntegrityError, match=r"events\.jsonl:2: not a valid event: \$\.ts"):
        log.verify()
    # a line removed from the middle: seq jumps
    log.path.write_bytes(b"\n".join([lines[0], *lines[2:]]))
    with pytest.raises(IntegrityError, match=r"events\.jsonl:2: seq is 3, expected 2"):
        log.verify()


def test_deleted_last_line_is_detected_with_expected_count(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 4)
    head = log.verify()
    lines = log.path.read_bytes().split(b"\n")
    log.path.write_bytes(b"\n".join(lines[:3]) + b"\n")
    log.verify()  # the chain itself is intact
    with pytest.raises(IntegrityError, match=r"3 events but run.json records 4: it was truncated"):
        log.verify(expected_count=4, expected_head=head)
    with pytest.raises(IntegrityError, match="does not match the expected head"):
        log.verify(expected_head=head)


def test_more_lines_than_recorded_is_fine(tmp_path: Path) -> None:
    """A crash between the append and the run.json write leaves the log ahead: not damage."""
    log = _log_with(tmp_path, 2)
    head2 = log.verify()
    log.append("note", "r1", ts=TS)
    log.verify(expected_count=2, expected_head=head2)


def test_torn_last_line_is_detected_and_repaired(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 3)
    head = log.verify()
    intact = log.path.read_bytes()
    with log.path.open("ab") as fh:
        fh.write(b'{"data":{},"entity":"F9","from_st')  # crash mid-append
    with pytest.raises(IntegrityError, match=r"events\.jsonl:4: incomplete last line"):
        log.verify()
    assert len(log.read()) == 3  # the fragment is not an event
    assert log.repair_torn_tail() is True
    assert log.path.read_bytes() == intact
    assert log.repair_torn_tail() is False
    assert log.verify(expected_count=3, expected_head=head) == head


def test_append_repairs_a_torn_tail_first(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 2)
    with log.path.open("ab") as fh:
        fh.write(b'{"seq":3,"ki')
    ev = EventLog(log.path).append("note", "r1", ts=TS)
    assert ev.seq == 3
    log.verify(expected_count=3)


def test_torn_only_line_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"seq":1,')
    ev = EventLog(path).append("run", "r1", ts=TS)
    assert ev.seq == 1 and ev.prev_sha256 == EMPTY_SHA256
    EventLog(path).verify(expected_count=1)


def test_append_refuses_bad_data(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    with pytest.raises(InvalidInput, match="cannot record event"):
        log.append("note", "r1", data={"x": object()})
    with pytest.raises(InvalidInput, match="cannot record event"):
        log.append("note", "r1", ts="yesterday")
    assert log.read() == []


def test_append_reads_only_the_tail(tmp_path: Path) -> None:
    """A long log: the tail is found from the end (line longer than one read chunk too)."""
    log = EventLog(tmp_path / "events.jsonl")
    log.append("note", "r1", data={"big": "y" * 200_000}, ts=TS)
    log.append("note", "r1", data={"big": "z" * 150_000}, ts=TS)
    ev = EventLog(log.path).append("note", "r1", ts=TS)
    assert ev.seq == 3
    log.verify(expected_count=3)


# -- run store -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../x", "a b", "", "a" * 65, ".hidden", "x/y", "r\n", "-r"])
def test_run_id_is_validated(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidInput, match="invalid run id"):
        RunStore(tmp_path, bad)


def test_run_id_of_64_chars_is_fine(tmp_path: Path) -> None:
    store = RunStore(tmp_path, "a" * 64)
    assert store.run_dir == tmp_path / "runs" / ("a" * 64)


def test_paths(tmp_path: Path) -> None:
    s = RunStore(tmp_path, "add-jitter")
    rd = tmp_path / "runs" / "add-jitter"
    assert s.run_dir == rd
    assert s.plan_path == rd / "plan.yaml"
    assert s.run_json == rd / "run.json"
    assert s.strategy_json == rd / "strategy.json"
    assert s.events_path == rd / "events.jsonl"
    assert s.issue_index_path == rd / "run_issue_index.json"
    assert s.summary_md == rd / "RUN_SUMMARY.md"
    assert s.incident_dir == rd / "incident"
    assert s.tiers_dir == rd / "tiers"
    assert s.phase_dir(1, "F1.1") == rd / "phases" / "01-F1.1"
    assert s.phase_dir(12, "F3") == rd / "phases" / "12-F3"
    assert s.attempt_dir(3, "F1.2", 2) == rd / "phases" / "03-F1.2" / "attempts" / "2"
    assert s.ci_dir(3, "F1.2", 1) == rd / "phases" / "03-F1.2" / "ci" / "1"
    assert s.audit_dir(3, "F1.2", 1) == rd / "phases" / "03-F1.2" / "audit" / "1"
    assert s.events is s.events and s.events.path == s.events_path
    with pytest.raises(InvalidInput, match="invalid phase id"):
        s.phase_dir(1, "../F1")
    with pytest.raises(InvalidInput, match="invalid phase index"):
        s.phase_dir(0, "F1")
    with pytest.raises(InvalidInput, match="invalid attempts number"):
        s.attempt_dir(1, "F1", -1)


def test_exists_and_list_runs(tmp_path: Path) -> None:
    assert RunStore.list_runs(tmp_path) == []
    b = RunStore(tmp_path, "b-run")
    a = RunStore(tmp_path, "a-run")
    assert not b.exists()
    b.run_dir.mkdir(parents=True)
    assert not b.exists()
    b.plan_path.write_text("run_id: b-run\n")
    a.run_dir.mkdir(parents=True)
    a.run_json.write_text("{}\n")
    (tmp_path / "runs" / "empty").mkdir()
    (tmp_path / "runs" / "stray.txt").write_text("")
    assert b.exists() and a.exists()
    assert RunStore.list_runs(tmp_path) == ["a-run", "b-run"]


# -- lock ------------------------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pipeline.store.rundir import RunStore
    with RunStore(Path(sys.argv[1]), sys.argv[2]).lock():
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_lock_in_one_process(tmp_path: Path) -> None:
    store = RunStore(tmp_path, "r1")
    with store.lock() as lock:
        assert lock.held
        info = json.loads((store.run_dir / ".lock").read_text())
        assert info["pid"] == os.getpid() and info["host"] and info["since"].endswith("Z")
        # a second lock on another fd in the same process is refused
        with pytest.raises(RunLocked, match=rf"^run r1 is locked by pid {os.getpid()} since "):
            store.lock().acquire()
    assert not lock.held
    assert (store.run_dir / ".lock").exists()  # released, file left
    with store.lock():
        pass


def test_lock_held_by_another_process_then_taken_over_after_kill(tmp_path: Path) -> None:
    store = RunStore(tmp_path, "r1")
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path), "r1"],
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"locked\n"
        with pytest.raises(RunLocked) as info, store.lock():
            pytest.fail("acquired a lock another process holds")
        msg = info.value.message
        assert re.fullmatch(
            rf"run r1 is locked by pid {child.pid} since \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ on {socket.gethostname()}",
            msg,
        ), msg
        assert "since" in msg and str(child.pid) in msg
        assert "remove" in info.value.fix and str(store.run_dir / ".lock") in info.value.fix
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    # the kernel dropped the dead holder's lock: taken over without touching the file
    with store.lock() as lock:
        assert lock.held
        assert json.loads((store.run_dir / ".lock").read_text())["pid"] == os.getpid()
        assert lock.took_over is not None and lock.took_over["pid"] == child.pid, "the takeover is noted"
    assert (store.run_dir / ".lock").read_text() == "", "a clean release leaves no holder record"
    with store.lock() as lock:
        assert lock.took_over is None


def test_lock_file_replaced_behind_our_back(tmp_path: Path) -> None:
    """Removing the lock file (the documented fix for a foreign pid) lets a new lock in."""
    path = tmp_path / ".lock"
    first = RunLock(path, "r1")
    first.acquire()
    try:
        path.unlink()
        with RunLock(path, "r1") as second:
            assert second.held
    finally:
        first.release()
