"""What the guard (pipeline/run/guard.py) costs around one untrusted step without a sandbox.

    .venv/bin/python bench/guard.py                 # 100 other runs of 50 files, 6 MB log
    .venv/bin/python bench/guard.py --runs 300 --files 50

Builds a temp workspace: the current run's record (one 6 MB CI log, 50 small files), N
other runs of M files of ~2 KB each, and a linked git worktree. Prints the seconds of the
first snapshot (every file hashed and copied to the backup directory), of a later snapshot
(only files whose stat changed are hashed again), of the comparison after a step that
changed nothing, and the backup directory's size. Memory: no file content is held.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from pipeline.run import guard


def _git(cwd: Path, *args: str) -> None:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def _workspace(root: Path, runs: int, files: int) -> tuple[Path, Path]:
    repo = root / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "a.txt").write_text("a\n")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=b", "-c", "user.email=b@example.invalid", "commit", "-q", "-m", "init")
    wt = root / "wt"
    _git(repo, "worktree", "add", "-q", "-b", "autonomous/current", str(wt))
    record = root / "workspace" / "runs" / "current"
    (record / "ci").mkdir(parents=True)
    (record / "ci" / "tests.log").write_bytes(b"log line of a chatty test run\n" * (6 * 1024 * 1024 // 30))
    for i in range(files):
        (record / f"f{i}.json").write_text('{"k": "%s"}\n' % ("v" * 2000))
    for r in range(runs):
        other = record.parent / f"run{r:03d}" / "phases" / "01-P1"
        other.mkdir(parents=True)
        for i in range(files):
            (other / f"f{i}.json").write_text(f'{{"run": {r}, "k": "{"v" * 2000}"}}\n')
    time.sleep(2.1)  # older than the guard's racy window, as a previous run's files are
    return record, wt


def _timed(what: str, fn: object) -> object:
    started = time.perf_counter()
    out = fn()  # type: ignore[operator]
    print(f"{what:45s} {time.perf_counter() - started:7.3f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--files", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="autopack-bench-guard-") as tmp:
        record, wt = _workspace(Path(tmp), args.runs, args.files)
        total = sum(1 for p in record.parent.rglob("*") if p.is_file())
        print(f"{total} files watched in runs/ ({args.runs} other runs of {args.files} files, one 6 MB log)")
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        _timed("first snapshot (hash + copy everything)", lambda: guard.take(record, wt))
        snap = _timed("later snapshot (stat only)", lambda: guard.take(record, wt))
        found = _timed("changes after a step that changed nothing", lambda: guard.changes(snap))  # type: ignore[arg-type]
        assert found == [], found
        size = sum(p.stat().st_size for p in guard.BACKUP.dir.iterdir())
        print(f"backup directory: {size / 1e6:.1f} MB in {len(list(guard.BACKUP.dir.iterdir()))} files")
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
