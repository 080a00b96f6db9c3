"""Start-up of the read-only commands: `status --run R` and `validate --run R`, in a finished run.

    .venv/bin/python bench/startup.py [--phases N] [--repeat N] [--target self|separate]
                                      [--importtime N] [--tmp DIR]

Builds a finished run the way bench/overhead.py does (a real start_run and run_to_end of N
phases whose builder rewrites one file), then times fresh processes of

- `python -m pipeline status|validate --run bench` (the console entry), and
- `doit status|validate --run bench` through a dodo.py that imports `autopack_tasks` (doit
  loads every task definition before it runs one),

each the best of `--repeat` (wall and CPU: user + system of the child; on a loaded machine
the CPU time moves far less than the wall time), against issue 15's targets (status 0.2 s,
validate 0.3 s wall). Last, the top `--importtime` entries of `python -X importtime` of each
console command, by cumulative time, so a heavy import shows where it comes from.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import RUN_ID, STARTUP_TARGETS, isolate_git, supervisor

_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)\s*$")


def child_env(pycache: Path | None) -> dict[str, str]:
    """The children's environment: with `pycache`, bytecode is written to and read from it
    (as an installed package has its .pyc files), whatever PYTHONDONTWRITEBYTECODE says."""
    env = dict(os.environ)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def best_of(argv: list[str], cwd: Path, repeat: int, env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of `repeat` fresh processes (after one warm-up)."""
    subprocess.run(argv, cwd=cwd, capture_output=True, check=False, env=env)
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, env=env)
        wall = min(wall, time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = min(cpu, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"bench: `{' '.join(argv)}` failed:\n{done.stdout}{done.stderr}")
    return wall, cpu


def importtime(argv: list[str], cwd: Path, top: int, env: dict[str, str]) -> list[str]:
    """The `top` imports by cumulative microseconds (depth shown by indent), and the total."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], cwd=cwd, capture_output=True, text=True, check=False, env=env
    )
    rows = []
    for line in done.stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m:
            rows.append((int(m.group(2)), len(m.group(3)) // 2, m.group(4)))
    total = sum(cum for cum, depth, _ in rows if depth == 0)
    lines = [f"  {total / 1000:7.1f} ms in {len(rows)} modules (top-level imports summed)"]
    for cum, depth, name in sorted(rows, reverse=True)[:top]:
        lines.append(f"  {cum / 1000:7.1f} ms  {'  ' * depth}{name}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", type=int, default=10, help="phases in the finished run (default 10)")
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per command (default 5)")
    parser.add_argument("--target", choices=["self", "separate"], default="self")
    parser.add_argument("--importtime", type=int, default=15, help="import-time entries shown (default 15)")
    parser.add_argument("--tmp", default=None, help="directory for the temp repositories")
    parser.add_argument(
        "--no-pyc",
        action="store_true",
        help="children run without cached bytecode when PYTHONDONTWRITEBYTECODE is set (each compiles "
        "~60 modules, +40-50 ms); by default they cache it in a temp dir, as an installed package has it",
    )
    parser.add_argument(
        "--keep", default=None, help="build the run in this directory and keep it (reused when it holds one)"
    )
    args = parser.parse_args(argv)
    if args.phases < 1 or args.repeat < 1:
        parser.error("--phases and --repeat must be at least 1")

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    doit = Path(sys.executable).with_name("doit")
    with tempfile.TemporaryDirectory(prefix="autopack-startup-", dir=args.tmp) as tmp:
        root = Path(args.keep).resolve() if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        ws = root / "b" / "ws"
        if not (ws / "runs" / RUN_ID / "run.json").is_file():
            isolate_git(root)
            (root / "b").mkdir()
            sup = supervisor(root / "b", args.phases, "python", args.target, False)
            if sup.state != "DONE_SUCCESS":
                print(f"bench: the run ended {sup.state}, not DONE_SUCCESS", file=sys.stderr)
                return 1
        isolate_git(root)
        (ws / "dodo.py").write_text("from autopack_tasks import *  # noqa: F403\n")
        env = child_env(None if args.no_pyc else root / "pycache")
        rows = []
        for command, target in STARTUP_TARGETS.items():
            for entry, prefix in (("python -m pipeline", [sys.executable, "-m", "pipeline"]), ("doit", [str(doit)])):
                wall, cpu = best_of([*prefix, command, "--run", RUN_ID], ws, args.repeat, env)
                rows.append((f"{entry} {command} --run R", wall, cpu, target))
        imports = {
            c: importtime(["-m", "pipeline", c, "--run", RUN_ID], ws, args.importtime, env) for c in STARTUP_TARGETS
        }
    print(
        f"start-up in a finished run of {args.phases} phases (best of {args.repeat} fresh processes; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; bytecode "
        f"{'as the environment says' if args.no_pyc else 'cached'}):\n"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'command':<{width}}  {'wall':>7}  {'CPU':>7}  target")
    for name, wall, cpu, target in rows:
        verdict = "met" if wall <= target else "NOT met"
        print(f"{name:<{width}}  {wall:6.3f}s  {cpu:6.3f}s  <= {target:g} s wall {verdict}")
    for command, lines in imports.items():
        print(f"\n`python -X importtime -m pipeline {command} --run R`, top {args.importtime} by cumulative time:")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
