"""The guard without a sandbox (and, where it applies, with one): a record file too large
to keep in memory, another run's record, the user's git configuration, a detached writer
that outlives a kill -9 (docs/security.md)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core import sandbox
from pipeline.run import guard
from pipeline.run.driver import run_to_end
from testing.gitrepo import git, make_repo
from testing.procs import alive, kill_all
from testing.runs import cli, make_workspace, phase, python_step

FILES = {"mod.py": "X = 1\n"}



def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _linked(tmp_path: Path) -> tuple[Path, Path]:
    repo = make_repo(tmp_path / "repo", FILES)
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "autonomous/r", str(wt))
    return repo, wt


# -- the guard alone ----------------------------------------------------------------------


def test_a_large_file_is_restored_and_a_tampered_copy_is_never_written(tmp_path: Path) -> None:
    _repo, wt = _linked(tmp_path)
    record = tmp_path / "runs" / "r"
    record.mkdir(parents=True)
    big = record / "ci.log"
    big.write_bytes(os.urandom(6 * 1024 * 1024))
    small = record / "run.json"
    small.write_text("{}\n")
    original = big.read_bytes()
    snap = guard.take(record, wt)
    big.write_bytes(b"x")
    assert guard.changes(snap) == [f"modified {big}"]
    assert guard.restore(snap) == [] and big.read_bytes() == original
    small.write_text('{"forged": true}\n')
    kept = guard.BACKUP.dir / hashlib.sha256(b"{}\n").hexdigest()
    kept.write_text('{"forged": "in the copy"}\n')  # the hostile step reached the backup too
    assert guard.restore(snap) == [str(small)]
    assert small.read_text() == '{"forged": true}\n', "a tampered copy was written back"


def test_other_runs_are_watched_unless_another_live_process_holds_their_lock(tmp_path: Path) -> None:
    _repo, wt = _linked(tmp_path)
    runs = tmp_path / "runs"
    (runs / "r").mkdir(parents=True)
    for name in ("old", "live"):
        (runs / name).mkdir()
        (runs / name / "run.json").write_text(f'{{"run": "{name}"}}\n')
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\nf = open(sys.argv[1], 'w')\n"
         "fcntl.flock(f, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)", str(runs / "live" / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert guard.other_runs(runs / "r") == [runs / "old"]
        snap = guard.take(runs / "r", wt)
        (runs / "old" / "run.json").write_text('{"run": "forged"}\n')
        (runs / "live" / "run.json").write_text('{"run": "live, written by its own supervisor"}\n')
        (runs / "old" / "extra.json").write_text("{}\n")
        old = runs / "old"
        assert guard.changes(snap) == [f"created {old / 'extra.json'}", f"modified {old / 'run.json'}"]
        guard.restore(snap)
        assert (runs / "old" / "run.json").read_text() == '{"run": "old"}\n'
        assert not (runs / "old" / "extra.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_proc_locks_is_read_only_when_a_sibling_run_has_a_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    for name in ("r", "old", "older"):
        (runs / name).mkdir(parents=True)
    (runs / "r" / ".lock").write_text("")  # our own lock never counts
    reads: list[int] = []
    real = guard._held_flocks
    monkeypatch.setattr(guard, "_held_flocks", lambda: reads.append(1) or real())
    assert guard.other_runs(runs / "r") == [runs / "old", runs / "older"]
    assert reads == [], "no sibling can hold an flock without a lock file"
    (runs / "older" / ".lock").write_text("")
    assert guard.other_runs(runs / "r") == [runs / "old", runs / "older"]
    assert reads == [1]


def test_a_file_changed_in_place_with_its_mtime_put_back_is_still_found(tmp_path: Path) -> None:
    _repo, wt = _linked(tmp_path)
    record = tmp_path / "runs" / "r"
    record.mkdir(parents=True)
    target = record / "strategy.json"
    target.write_text('{"protected": ["a"]}\n')
    old = time.time() - 3600
    os.utime(target, (old, old))
    time.sleep(2.1)  # outside the racy window: the stat alone decides
    snap = guard.take(record, wt)
    st = target.stat()
    with target.open("r+") as fh:  # same size, same inode
        fh.write('{"protected": ["b"]}\n')
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert guard.changes(snap) == [f"modified {target}"]


def test_a_file_is_racy_for_a_tick_s_reach_only_and_for_2_s_with_a_whole_second_timestamp(tmp_path: Path) -> None:
    _repo, wt = _linked(tmp_path)
    record = tmp_path / "runs" / "r"
    record.mkdir(parents=True)
    fine, whole = record / "run.json", record / "strategy.json"
    fine.write_text("{}\n")
    whole.write_text("{}\n")
    if fine.stat().st_ctime_ns % 1_000_000_000 == 0:
        pytest.skip("this filesystem keeps whole-second timestamps")
    second = time.time_ns() // 1_000_000_000 * 1_000_000_000
    os.utime(whole, ns=(second, second))
    time.sleep(0.25)
    snap = guard.take(record, wt)
    assert not snap.entries[str(fine)].racy, "150 ms after its last change a file is decided by its stat"
    assert snap.entries[str(whole)].racy, "a whole-second mtime may come from a coarse filesystem"
    fine.write_text("[]\n")
    assert guard.changes(snap) == [f"modified {fine}"]


# -- hostile builders through a whole run -------------------------------------------------


def test_a_builder_overwriting_a_6_mb_record_file_is_a_violation_and_the_file_is_restored(
    tmp_path: Path, mode: str
) -> None:
    body = (
        "run_dir = Path(os.environ['AUTOPACK_PHASE_JSON']).parents[2]\n"
        "if PHASE == 'P2':\n"
        "    big = max((p for p in run_dir.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)\n"
        "    try:\n"
        f"        Path({str(tmp_path / 'victim')!r}).write_text(str(big.relative_to(run_dir)))\n"
        "        big.write_bytes(b'overwritten')\n"
        "    except OSError as exc:\n"
        "        print('escape refused:', exc)\n"
        'write("mod.py", f"X = 2  # {PHASE}\\n")\n'
    )
    code = "import sys\nfor i in range(200000): sys.stdout.write(f'line {i:06d} of a long log\\n')"
    setup = make_workspace(
        tmp_path, files=FILES, agent_body=body, ci_steps=[python_step("chatty", code)],
        phases=[phase("P1"), phase("P2")],
    )
    setup.start()
    if mode == "bwrap":  # the builder cannot write outside the worktree: nothing to name
        run_to_end(setup.workspace, setup.run_id)
        assert setup.run_json()["state"] == "DONE_SUCCESS"
        return
    run_to_end(setup.workspace, setup.run_id)
    run = setup.run_json()
    victim = (tmp_path / "victim").read_text()
    path = setup.run_dir / victim
    assert path.stat().st_size > 4 * 1024 * 1024, victim
    assert run["state"] == "DONE_FAILED_POLICY_VIOLATION", run.get("failure_reason")
    assert victim in run["failure_reason"]
    assert path.read_bytes().startswith(b"line 000000") and b"overwritten" not in path.read_bytes()
    assert git(setup.repo, "tag", "--list", f"autonomous/{setup.run_id}/P2") == ""


def test_a_builder_editing_another_runs_record_is_a_violation_and_the_file_is_restored(
    tmp_path: Path, mode: str
) -> None:
    body = (
        "other = Path(os.environ['AUTOPACK_PHASE_JSON']).parents[3] / 'r0' / 'run.json'\n"
        "try:\n    other.write_text('{\"state\": \"DONE_SUCCESS\"}\\n')\n"
        "except OSError as exc:\n    print('escape refused:', exc)\n"
        'write("mod.py", "X = 2\\n")\n'
    )
    setup = make_workspace(tmp_path, files=FILES, agent_body=body)
    other = setup.workspace / "runs" / "r0"
    other.mkdir(parents=True)
    for i in range(50):
        (other / f"f{i}.json").write_text(f'{{"i": {i}}}\n')
    (other / "run.json").write_text('{"state": "DONE_FAILED_CI"}\n')
    before = {p.name: _sha(p) for p in other.iterdir()}
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    run = setup.run_json()
    assert {p.name: _sha(p) for p in other.iterdir()} == before, "another run's record changed"
    if mode == "bwrap":
        assert run["state"] == "DONE_SUCCESS"
        return
    assert run["state"] == "DONE_FAILED_POLICY_VIOLATION", run.get("failure_reason")
    assert "runs/r0/run.json" in run["failure_reason"]


def test_a_planted_filter_diff_or_merge_driver_never_runs_in_the_supervisors_git(tmp_path: Path, mode: str) -> None:
    """The phase declares `allows: [filters]`, so the gate lets `.gitattributes` through:
    the drivers must still never run in the supervisor's git add, diff, apply or commit."""
    mark = tmp_path / "PWNED"
    globl = os.environ["GIT_CONFIG_GLOBAL"]
    drivers = "".join(
        f'[{kind} "evil"]\\n\\t{key} = touch {mark}-{kind}-{key}\\n'
        for kind, key in (("filter", "clean"), ("filter", "smudge"), ("filter", "process"),
                          ("diff", "textconv"), ("diff", "command"), ("merge", "driver"))
    )
    body = (
        "for cfg in [Path(subprocess.run(['git', 'rev-parse', '--git-common-dir'], capture_output=True,"
        " text=True).stdout.strip()) / 'config', Path(" + repr(globl) + ")]:\n"
        "    try:\n"
        f"        with open(cfg, 'a') as fh: fh.write('{drivers}')\n"
        "    except OSError as exc:\n"
        "        print('escape refused:', exc)\n"
        "write('.gitattributes', '* filter=evil diff=evil merge=evil\\n')\n"
        'write("mod.py", "X = 2\\n")\n'
    )
    setup = make_workspace(tmp_path, files=FILES, agent_body=body, phases=[phase("P1", allows=["filters"])],
                           ci_steps=[python_step("import", "import mod")])
    global_before = Path(globl).read_bytes()
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    run = setup.run_json()
    assert sorted(p.name for p in tmp_path.glob("PWNED*")) == [], "a planted driver ran"
    assert Path(globl).read_bytes() == global_before
    assert "evil" not in (setup.repo / ".git" / "config").read_text()
    if mode == "bwrap":
        assert run["state"] == "DONE_SUCCESS", run.get("failure_reason")
        assert git(setup.repo, "show", f"{setup.branch}:.gitattributes") == "* filter=evil diff=evil merge=evil"
        return
    assert run["state"] == "DONE_FAILED_POLICY_VIOLATION", run.get("failure_reason")
    assert "config" in run["failure_reason"]


# -- kill -9 of the supervisor while a detached writer runs -------------------------------

SETSID_ONCE = """
flag = Path({flag!r})
if not flag.exists():
    writer = subprocess.Popen([sys.executable, "-c", "import os, pathlib, time\\nfor i in range(400):\\n"
        "    pathlib.Path('stray.txt').write_text(str(i))\\n"
        "    for p in pathlib.Path(os.environ['AUTOPACK_PHASE_JSON']).parent.glob('attempts/*'):\\n"
        "        (p / 'stray.txt').write_text(str(i))\\n"
        "    time.sleep(0.05)"], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    flag.write_text(f"{{os.getpid()}} {{writer.pid}}")
    time.sleep(60)
write("mod.py", "X = 2\\n")
"""


def test_a_setsid_writer_of_a_killed_run_never_reaches_the_rerun(tmp_path: Path) -> None:
    flag = tmp_path / "hung-once"
    setup = make_workspace(tmp_path, files=FILES, agent_body=SETSID_ONCE.format(flag=str(flag)),
                           ci_steps=[python_step("import", "import mod")])
    setup.start()
    env = {**os.environ, sandbox.SWITCH_ENV: "off"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--run", setup.run_id], cwd=setup.workspace,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not (flag.exists() and len(flag.read_text().split()) == 2):
            assert proc.poll() is None and time.monotonic() < deadline, "the builder never started"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # kill -9 of the supervisor alone
        proc.wait()
        pids += [int(p) for p in flag.read_text().split()]
        assert alive(pids[1]), "the detached writer should have outlived the supervisor"
        rerun = cli(setup, "run", "--run", setup.run_id, env={sandbox.SWITCH_ENV: "off"})
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert not any(alive(p) for p in pids), "the killed run's processes outlived the lock takeover"
        assert setup.run_json()["state"] == "DONE_SUCCESS"
        names = git(setup.repo, "ls-tree", "-r", "--name-only", setup.branch).split()
        assert "stray.txt" not in names
        # The rerun's guard watched its attempt through every step (DONE_SUCCESS); the writer's
        # last mark predates the rerun and no longer moves.
        marks = {p: p.read_text() for p in setup.phase_dir("P1").glob("attempts/*/stray.txt")}
        time.sleep(0.3)
        assert {p: p.read_text() for p in marks} == marks
    finally:
        kill_all(pids)
