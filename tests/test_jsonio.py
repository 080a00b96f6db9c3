"""pipeline.core.jsonio: deterministic JSON, atomic writes that survive SIGKILL, located errors."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import Field

from pipeline.core.errors import InvalidInput, ValidationErrors
from pipeline.core.jsonio import (
    canonical_json,
    json_path,
    read_json,
    read_model,
    write_json_atomic,
    write_model,
    write_text_atomic,
)
from pipeline.models.base import Frozen

REPO = Path(__file__).resolve().parents[1]


class Item(Frozen):
    name: str
    size: int = Field(ge=0)


class Doc(Frozen):
    title: str
    items: list[Item] = Field(default_factory=list)


def test_canonical_json_is_independent_of_key_order() -> None:
    a = {"b": 1, "a": {"y": [1, 2], "x": "é"}}
    b = {"a": {"x": "é", "y": [1, 2]}, "b": 1}
    assert canonical_json(a) == canonical_json(b)
    text = canonical_json(a)
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text.index('"a"') < text.index('"b"')
    assert "é" in text  # not \u00e9
    assert '\n  "a": {\n    "x"' in text  # indent 2


def test_canonical_json_refuses_nan() -> None:
    with pytest.raises(InvalidInput, match="cannot write JSON"):
        canonical_json({"x": float("nan")})


def test_write_creates_parents_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.json"
    assert write_json_atomic(target, {"k": 1}) is True
    assert target.read_text() == '{\n  "k": 1\n}\n'
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]


def test_unchanged_rewrite_touches_nothing(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    assert write_json_atomic(target, {"b": 2, "a": 1}) is True
    old = 1_000_000_000
    os.utime(target, (old, old))
    inode = target.stat().st_ino
    assert write_json_atomic(target, {"a": 1, "b": 2}) is False
    assert target.stat().st_mtime == old
    assert target.stat().st_ino == inode
    assert write_json_atomic(target, {"a": 1, "b": 3}) is True
    assert target.stat().st_mtime != old
    assert json.loads(target.read_text()) == {"a": 1, "b": 3}


def test_write_model_and_read_model_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    doc = Doc(title="t", items=[Item(name="a", size=1)])
    assert write_model(target, doc) is True
    assert write_model(target, doc) is False
    assert target.read_text() == canonical_json(doc.model_dump(mode="json"))
    assert read_model(target, Doc) == doc


def test_read_model_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    target.write_text('{\n  "title": "t",\n  "items": [,]\n}\n')
    with pytest.raises(InvalidInput) as info:
        read_model(target, Doc)
    assert f"{target}:3:13: invalid JSON" in info.value.message
    assert "line 3, column 13" in info.value.fix


def test_read_model_validation_errors_list_json_paths(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    target.write_text(
        json.dumps({"title": 5, "items": [{"name": "a", "size": 1}, {"name": "b", "size": -1}],
                    "extra": True})
    )
    with pytest.raises(ValidationErrors) as info:
        read_model(target, Doc)
    problems = info.value.problems
    assert f"{target}: $.title: Input should be a valid string" in problems
    size_msg = f"{target}: $.items[1].size: Input should be greater"
    assert any(p.startswith(size_msg) for p in problems)
    assert any(p.startswith(f"{target}: $.extra: Extra inputs") for p in problems)
    assert len(problems) == 3
    assert str(target) in info.value.fix and "Doc" in info.value.fix
    assert isinstance(info.value, InvalidInput)


def test_read_model_missing_file(tmp_path: Path) -> None:
    target = tmp_path / "nope.json"
    with pytest.raises(InvalidInput, match=r"nope\.json: file not found"):
        read_model(target, Doc)


def test_read_json_not_utf8(tmp_path: Path) -> None:
    target = tmp_path / "bin.json"
    target.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(InvalidInput, match="not UTF-8"):
        read_json(target)


def test_json_path() -> None:
    assert json_path(("a", "b", 0, "c")) == "$.a.b[0].c"
    assert json_path(()) == "$"
    assert json_path(("weird key",)) == '$["weird key"]'


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pipeline.core.jsonio import write_text_atomic
    target = Path(sys.argv[1])
    versions = [sys.argv[2], sys.argv[3]]
    texts = [open(v, encoding="utf-8").read() for v in versions]
    write_text_atomic(target, texts[0])
    print("ready", flush=True)
    i = 1
    while True:
        write_text_atomic(target, texts[i % 2])
        i += 1
    """
)


def test_writer_killed_mid_write_leaves_a_complete_version(tmp_path: Path) -> None:
    blob = "x" * 200_000
    versions = [
        canonical_json({"version": "A", "lines": [f"{i}-{blob[:100]}" for i in range(4000)]}),
        canonical_json({"version": "B", "blob": blob * 4, "n": list(range(1000))}),
    ]
    sources = []
    for name, text in zip("AB", versions, strict=True):
        src = tmp_path / f"{name}.src"
        src.write_text(text, encoding="utf-8")
        sources.append(str(src))
    target = tmp_path / "out" / "artifact.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = random.Random(1234)
    seen = set()
    for _ in range(30):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(target), *sources],
            stdout=subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0, 0.03))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        text = target.read_text(encoding="utf-8")
        assert text in versions, "a killed writer left a partial file"
        seen.add(json.loads(text)["version"])
    assert seen  # at least one version observed (usually both)


def test_write_text_atomic_refuses_directory_target(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(InvalidInput, match="is a directory"):
        write_text_atomic(tmp_path / "d", "x")


def test_a_barrier_runs_before_every_atomic_write_and_child_process(tmp_path: Path) -> None:
    """A writer holding a write back (the Recorder) gets it out before anything else lands."""
    from pipeline.core import proc
    from pipeline.core.jsonio import add_barrier, remove_barrier

    held = tmp_path / "held.txt"
    order: list[str] = []

    def flush() -> None:
        remove_barrier(flush)  # what a writer does: its own write passes the barrier
        order.append("flush")
        write_text_atomic(held, "held back\n")

    add_barrier(flush)
    add_barrier(flush)  # registered once
    write_text_atomic(tmp_path / "other.txt", "x\n")
    assert order == ["flush"] and held.read_text() == "held back\n"

    held.unlink()
    add_barrier(flush)
    seen = proc.run(["cat", str(held)])
    assert seen.stdout == "held back\n" and order == ["flush", "flush"]
    write_text_atomic(tmp_path / "other.txt", "y\n")
    assert order == ["flush", "flush"]  # removed: not run again


def test_model_text_is_what_write_model_writes(tmp_path: Path) -> None:
    from pipeline.core.jsonio import model_text

    doc = Doc(title="t", items=[Item(name="a", size=1)])
    write_model(tmp_path / "doc.json", doc)
    assert (tmp_path / "doc.json").read_text() == model_text(tmp_path / "doc.json", doc)


def _counting_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The fds fsynced from now on (the real fsync still runs)."""
    seen: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_an_atomic_write_is_fsynced_unless_an_event_log_covers_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside a run directory a write is fsynced (file and directory); below a directory
    whose durability point is its event log, it is renamed into place without an fsync."""
    from pipeline.core.jsonio import log_is_durability_point

    fsyncs = _counting_fsyncs(monkeypatch)
    write_text_atomic(tmp_path / "plain" / "a.json", "{}\n")
    assert len(fsyncs) == 2  # the file, then its directory

    run_dir = tmp_path / "runs" / "r1"
    log_is_durability_point(run_dir)
    write_text_atomic(run_dir / "phases" / "01-P1" / "phase.json", "{}\n")
    write_text_atomic(run_dir / "run.json", "{}\n")
    assert len(fsyncs) == 2
    assert (run_dir / "run.json").read_text() == "{}\n"
    assert not list(run_dir.glob(".*.tmp.*"))
    write_text_atomic(tmp_path / "runs" / "r2" / "run.json", "{}\n")  # a sibling is not covered
    assert len(fsyncs) == 4


def test_a_children_only_barrier_waits_for_a_child_process_not_for_a_write(tmp_path: Path) -> None:
    """The event log's deferred fsync (the Recorder's) runs before a child starts, not
    before every artifact write."""
    from pipeline.core import proc
    from pipeline.core.jsonio import add_barrier, barrier, remove_barrier

    ran: list[str] = []

    def sync() -> None:
        remove_barrier(sync)
        ran.append("sync")

    add_barrier(sync, children_only=True)
    write_text_atomic(tmp_path / "a.txt", "x\n")
    barrier()
    assert ran == []
    proc.run(["true"])
    assert ran == ["sync"]
    add_barrier(sync, children_only=True)
    barrier(children=True)
    assert ran == ["sync", "sync"]
