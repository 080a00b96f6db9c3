"""The run context and its record keeper: what is written when, and the record's copy.

Writes are batched without changing what a crash can leave behind: phase files reach the
disk before any other durable effect (an event, another file, a child process), run.json
may lag and is repaired from the phase files when the run is opened again, and the copy
of the record that rides on the integration branch only copies what changed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pipeline.core import proc
from pipeline.models.run import Spend
from pipeline.run.context import open_context, sync_tree
from testing.runs import RunSetup, make_workspace

# -- the record's copy in the worktree ---------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _make(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_sync_tree_copies_the_record_without_lock_and_temp_files(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "wt" / "runs" / "r1"
    _make(src, {"run.json": "{}\n", "phases/01-P1/phase.json": "{}\n", ".lock": "pid\n",
                "phases/01-P1/.phase.json.tmp.42": "partial", "x.tmp.1": "partial"})
    sync_tree(src, dest)
    assert _tree(dest) == {"run.json": b"{}\n", "phases/01-P1/phase.json": b"{}\n"}
    assert os.stat(dest / "run.json").st_mtime_ns == os.stat(src / "run.json").st_mtime_ns


def test_sync_tree_copies_changes_and_removes_what_is_gone(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    _make(src, {"a.json": "1\n", "keep.json": "same\n", "gone.json": "x\n", "old/dir/f.txt": "f\n"})
    sync_tree(src, dest)
    (src / "a.json").write_text("22\n")
    (src / "gone.json").unlink()
    (src / "old" / "dir" / "f.txt").unlink()
    (src / "old" / "dir").rmdir()
    (src / "old").rmdir()
    (src / "new").mkdir()
    (src / "new" / "n.txt").write_text("n\n")
    (dest / ".lock").write_text("copied by someone else\n")
    sync_tree(src, dest)
    assert _tree(dest) == _tree(src) == {"a.json": b"22\n", "keep.json": b"same\n", "new/n.txt": b"n\n"}


def test_sync_tree_sees_a_rewrite_that_keeps_size_and_mtime(tmp_path: Path) -> None:
    """A file rewritten within one timestamp tick of its copy is compared byte for byte."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    _make(src, {"run.json": '{"state": "GATE"}\n'})
    sync_tree(src, dest)
    before = os.stat(src / "run.json")
    (src / "run.json").write_text('{"state": "DONE"}\n')  # same size
    os.utime(src / "run.json", ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime
    sync_tree(src, dest)
    assert (dest / "run.json").read_text() == '{"state": "DONE"}\n'


def test_sync_tree_leaves_unchanged_copies_alone(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    _make(src, {"phases/01-P1/phase.json": "{}\n", "run.json": "{}\n"})
    _age(src / "phases/01-P1/phase.json", 60)  # trusted on size and mtime
    sync_tree(src, dest)  # run.json: changed just now, compared byte for byte
    copies = {name: os.stat(dest / name) for name in ("phases/01-P1/phase.json", "run.json")}
    time.sleep(0.01)
    sync_tree(src, dest)
    for name, copy in copies.items():
        again = os.stat(dest / name)
        assert (again.st_ino, again.st_ctime_ns) == (copy.st_ino, copy.st_ctime_ns), name


def test_sync_tree_never_writes_through_links_in_the_copy(tmp_path: Path) -> None:
    src, dest, outside = tmp_path / "src", tmp_path / "dest", tmp_path / "outside"
    _make(src, {"run.json": "new\n", "phases/01-P1/phase.json": "p\n"})
    _make(outside, {"victim.txt": "keep me\n", "phases/01-P1/phase.json": "keep me too\n"})
    dest.mkdir()
    (dest / "run.json").symlink_to(outside / "victim.txt")
    (dest / "phases").symlink_to(outside / "phases")
    sync_tree(src, dest)
    assert _tree(outside) == {"victim.txt": b"keep me\n", "phases/01-P1/phase.json": b"keep me too\n"}
    assert not (dest / "run.json").is_symlink() and not (dest / "phases").is_symlink()
    assert _tree(dest) == _tree(src)


# -- when the recorder writes ------------------------------------------------------------


@pytest.fixture
def setup(tmp_path: Path) -> RunSetup:
    s = make_workspace(tmp_path, agent_body='write("out.txt", "built\\n")')
    s.start()
    return s


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_phase_saves_reach_the_disk_before_any_child_process(setup: RunSetup) -> None:
    phase_json = setup.phase_dir("P1") / "phase.json"
    run_json = setup.run_dir / "run.json"
    with open_context(setup.workspace, setup.run_id) as ctx:
        on_disk = _text(phase_json)
        run_before = run_json.read_bytes()
        rec = ctx.rec.phase("P1")
        ctx.rec.save_phase(rec.model_copy(update={"step": "building"}))
        ctx.rec.save_phase(ctx.rec.phase("P1").model_copy(update={"current_attempt": 1}))
        assert _text(phase_json) == on_disk  # held back: two saves, one write
        seen = proc.run(["cat", str(phase_json)])
        assert json.loads(seen.stdout)["step"] == "building"
        assert json.loads(seen.stdout)["current_attempt"] == 1
        assert run_json.read_bytes() == run_before  # run.json follows at the end of the step
    run = json.loads(run_json.read_text())
    assert run["updated_at"] and json.loads(_text(phase_json))["current_attempt"] == 1


def test_phase_saves_reach_the_disk_before_the_next_event_or_file(setup: RunSetup) -> None:
    phase_json = setup.phase_dir("P1") / "phase.json"
    with open_context(setup.workspace, setup.run_id) as ctx:
        ctx.rec.save_phase(ctx.rec.phase("P1").model_copy(update={"feedback": "first"}))
        ctx.rec.note("P1", "something")
        assert json.loads(_text(phase_json))["feedback"] == "first"
        ctx.rec.save_phase(ctx.rec.phase("P1").model_copy(update={"feedback": "second"}))
        from pipeline.core.jsonio import write_text_atomic

        write_text_atomic(setup.run_dir / "other.txt", "x\n")
        assert json.loads(_text(phase_json))["feedback"] == "second"


def test_a_lagging_run_json_is_repaired_when_the_run_is_opened(setup: RunSetup) -> None:
    """A crash after phase.json was written but before run.json was: the summaries follow."""
    run_json = setup.run_dir / "run.json"
    ctx = open_context(setup.workspace, setup.run_id)
    rec = ctx.rec.phase("P1")
    spend = Spend(tokens=1234, cost_usd=0.5, builder_attempts=1)
    ctx.rec.save_phase(rec.model_copy(update={"spend": spend, "commit": "c" * 40}))
    ctx.rec.note("P1", "checkpoint")  # phase.json and an event reach the disk, run.json too
    ctx.rec.save_phase(ctx.rec.phase("P1").model_copy(update={"spend": spend.model_copy(update={"tokens": 5000})}))
    proc.run(["true"])  # the phase file is written; the process "dies" before run.json is
    lagging = json.loads(run_json.read_text())
    assert lagging["phases"][0]["tokens"] == 1234

    with open_context(setup.workspace, setup.run_id) as again:
        assert again.rec.run.phases[0].tokens == 5000
        assert again.rec.run.tiers[0].spend.tokens == 5000
        assert again.rec.run.spend.tokens == 5000
    repaired = json.loads(run_json.read_text())
    assert repaired["phases"][0]["tokens"] == 5000 and repaired["phases"][0]["commit"] == "c" * 40
    assert repaired["spend"]["tokens"] == 5000


def test_opening_an_up_to_date_run_writes_nothing(setup: RunSetup) -> None:
    run_json = setup.run_dir / "run.json"
    before = os.stat(run_json)
    with open_context(setup.workspace, setup.run_id):
        pass
    after = os.stat(run_json)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
