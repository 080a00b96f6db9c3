"""The supervisor's own overhead per phase, against the raw git work a phase needs.

    .venv/bin/python bench/overhead.py [--phases N] [--agent python|sh] [--target self|separate]
                                       [--tmp DIR] [--profile]

In one process, on temp repositories:

(a) raw: the git commands one accepted phase needs, run directly with subprocess:
    `git worktree add` once, then per phase: write a small change, `git diff` to a patch
    file, `git checkout -f`, `git apply`, `git add -A`, `git commit`, `git tag -a`;
(b) supervisor: the same number of phases through `pipeline.run.start.start_run` and
    `pipeline.run.driver.run_to_end`, with a builder that rewrites one small file and a
    no-op CI profile (one step: `true`).

It prints the totals, the per-phase figures, the ratio supervisor/raw (target: under 3;
reported, never failed on), and where the supervisor's time went: every child process it
started (git by subcommand, the agent, CI steps) counted and timed at
`pipeline.core.proc.run`, the fsyncs it made (each costs a disk flush; `--tmp /dev/shm` runs
both sides on tmpfs, where they cost next to nothing), the rest is Python in this process. Module imports are warmed up
before timing and reported separately: each `doit` invocation pays them once.
`--profile` adds a cProfile of part (b), top 25 by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IDENTITY = {
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}
RUN_ID = "bench"
TARGET_RATIO = 3.0
FILES = {"README.md": "bench repository\n", "progress.txt": "nothing yet\n", "src/lib.py": "VALUE = 1\n"}


# -- environment and git helpers --------------------------------------------------------------


def isolate_git(root: Path) -> None:
    """No home or system git config for anything this process (or its children) runs."""
    cfg = root / "gitconfig"
    cfg.write_text("[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n")
    for name in [n for n in os.environ if n.startswith("GIT_")]:
        del os.environ[name]
    os.environ.update({"GIT_CONFIG_GLOBAL": str(cfg), "GIT_CONFIG_NOSYSTEM": "1", **IDENTITY})


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench: git {' '.join(args)} failed in {cwd}:\n{done.stderr}")
    return done.stdout


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for rel, text in FILES.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def change(phase: int) -> str:
    """The small change of phase `phase` (both sides write the same bytes)."""
    return f"phase P{phase:03d} was here\n"


# -- (a) raw git ---------------------------------------------------------------------------


def raw(root: Path, phases: int) -> tuple[float, float]:
    """(setup seconds, loop seconds) of the bare git work."""
    repo = make_repo(root / "raw")
    wt = root / "raw-wt"
    patch = root / "raw.patch"
    t0 = time.perf_counter()
    git(repo, "worktree", "add", "-q", "-b", f"autonomous/{RUN_ID}", str(wt), "main")
    t1 = time.perf_counter()
    for i in range(1, phases + 1):
        (wt / "progress.txt").write_text(change(i))
        patch.write_text(git(wt, "diff", "--binary"))
        git(wt, "checkout", "-q", "-f")
        git(wt, "apply", str(patch))
        git(wt, "add", "-A")
        git(wt, "commit", "-q", "-m", f"P{i:03d}")
        git(wt, "tag", "-a", "-m", f"phase P{i:03d}", f"autonomous/{RUN_ID}/P{i:03d}")
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


# -- (b) the supervisor ----------------------------------------------------------------------


@dataclass
class ChildLog:
    """Every child process the supervisor started: count and seconds, by kind.

    With `attribute`, git calls are also counted by (product caller, LocalGitCli method, git
    subcommand): the first frame in `pipeline/` outside vcs/local.py and the local.py method
    below it.
    """

    attribute: bool = False
    count: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    callers: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    fsyncs: int = 0

    def add(self, kind: str, seconds: float) -> None:
        self.count[kind] += 1
        self.seconds[kind] += seconds

    def total(self, prefix: str = "") -> tuple[int, float]:
        keys = [k for k in self.count if k.startswith(prefix)]
        return sum(self.count[k] for k in keys), sum(self.seconds[k] for k in keys)


def _kind(argv: Any) -> str:
    if isinstance(argv, str):
        return "sh"
    args = list(argv)
    if not args or Path(args[0]).name != "git":
        return Path(args[0]).name if args else "?"
    rest = args[1:]
    while rest and rest[0].startswith("-"):  # global options: --no-optional-locks, -c k=v
        rest = rest[2:] if rest[0] == "-c" else rest[1:]
    return f"git {rest[0] if rest else args[-1]}"


def _git_caller() -> tuple[str, str]:
    """(first product frame outside vcs/local.py, the LocalGitCli method it called) of the current stack."""
    frames = [f for f in traceback.extract_stack() if f"{os.sep}pipeline{os.sep}" in f.filename]
    method, caller = "?", "?"
    for f in reversed(frames):
        name = f"{Path(f.filename).stem}.{f.name}"
        if Path(f.filename).name == "local.py" and Path(f.filename).parent.name == "vcs":
            method = name if not f.name.startswith("_") or method == "?" else method
        elif Path(f.filename).name != "proc.py":
            caller = name
            break
    return caller, method


@contextmanager
def counting_children(log: ChildLog) -> Iterator[None]:
    """Time every `pipeline.core.proc.run` call (ci.py imported it by name: patched there too)."""
    import pipeline.ci.runner
    import pipeline.core.proc

    original = pipeline.core.proc.run

    def wrap(label: str | None) -> Callable[..., Any]:
        def run(argv: Any, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return original(argv, *args, **kwargs)
            finally:
                kind = label or _kind(argv)
                if kind == "sh":
                    kind = "agent/check (sh)"
                log.add(kind, time.perf_counter() - t)
                if log.attribute and kind.startswith("git "):
                    log.callers[(*_git_caller(), kind)] += 1

        return run

    real_fsync = os.fsync

    def fsync(fd: Any) -> None:
        log.fsyncs += 1
        real_fsync(fd)

    pipeline.core.proc.run = wrap(None)
    os.fsync = fsync
    had_ci_run = getattr(pipeline.ci.runner, "run", None) is original
    if had_ci_run:
        pipeline.ci.runner.run = wrap("ci step")  # type: ignore[attr-defined]
    try:
        yield
    finally:
        pipeline.core.proc.run = original
        os.fsync = real_fsync
        if had_ci_run:
            pipeline.ci.runner.run = original  # type: ignore[attr-defined]


def write_agent(root: Path, kind: str) -> str:
    """The builder command: rewrite progress.txt with this phase's line, report usage."""
    if kind == "sh":
        return "printf 'phase %s was here\\n' \"$AUTOPACK_PHASE_ID\" > progress.txt"
    agent = root / "agent.py"
    agent.write_text(
        "import json, os\n"
        "phase = os.environ['AUTOPACK_PHASE_ID']\n"
        "with open('progress.txt', 'w') as f:\n"
        "    f.write(f'phase {phase} was here\\n')\n"
        "with open(os.environ['AUTOPACK_RESULT'], 'w') as f:\n"
        "    json.dump({'status': 'success', 'usage': {'tokens_in': 1, 'tokens_out': 1, 'cost_usd': 0.0}}, f)\n"
    )
    return f"{sys.executable} -S -I {agent}"


def write_plan(workspace: Path, target: Path | None, phases: int, builder: str) -> None:
    import json

    lines = [
        f"run_id: {RUN_ID}",
        "project_id: bench",
        f"target: {{repo: {json.dumps(str(target)) if target else '.'}, base: main}}",
        "safety_profile: normal",
        "agents:",
        f"  builder: {{command: {json.dumps(builder)}}}",
        "ci:",
        "  normal:",
        "    steps:",
        '      - {name: noop, run: "true"}',
        "tiers:",
        "  - tier_id: T1",
        "    name: Bench",
        "    phases:",
    ]
    for i in range(1, phases + 1):
        lines += [
            f"      - phase_id: P{i:03d}",
            f"        name: Phase {i}",
            "        description: Rewrite progress.txt.",
            "        task_category: feature_scaffolding",
            "        complexity: low",
            '        scope: {allow: ["progress.txt"]}',
        ]
    plan = workspace / "runs" / RUN_ID / "plan.yaml"
    plan.parent.mkdir(parents=True)
    plan.write_text("\n".join(lines) + "\n")
    if phases > 25:  # the built-in run budget allows 25 phases
        (workspace / "profiles").mkdir(exist_ok=True)
        (workspace / "profiles" / "ruleset.yaml").write_text(f"run_budgets:\n  max_phases: {phases}\n")
        git(workspace, "add", "-A", "profiles")
        git(workspace, "commit", "-q", "-m", "bench ruleset")


@dataclass
class SupervisorTimes:
    imports: float
    start: float
    loop: float
    cpu_self: float
    cpu_children: float
    children: ChildLog
    state: str
    profile: str = ""


def warm_imports() -> float:
    t = time.perf_counter()
    import pipeline.run.driver
    import pipeline.run.start  # noqa: F401
    from pipeline.core.schemas import schema_problems

    schema_problems({}, {"type": "object"})  # jsonschema, imported lazily as the product does
    return time.perf_counter() - t


def supervisor(root: Path, phases: int, agent: str, target_kind: str, profile: bool) -> SupervisorTimes:
    imports = warm_imports()
    from pipeline.run.driver import run_to_end
    from pipeline.run.start import start_run

    if target_kind == "self":
        workspace = make_repo(root / "ws")
        target = None
    else:
        workspace = root / "ws"
        workspace.mkdir()
        target = make_repo(root / "target")
    write_plan(workspace, target, phases, write_agent(root, agent))

    log = ChildLog(attribute=profile)
    prof = cProfile.Profile() if profile else None
    r0, c0 = os.times(), time.perf_counter()
    with counting_children(log):
        if prof:
            prof.enable()
        start_run(workspace, RUN_ID)
        c1 = time.perf_counter()
        outcomes = run_to_end(workspace, RUN_ID)
        c2 = time.perf_counter()
        if prof:
            prof.disable()
    r1 = os.times()
    text = ""
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("cumulative").print_stats(25)
        text = buf.getvalue()
    return SupervisorTimes(
        imports=imports,
        start=c1 - c0,
        loop=c2 - c1,
        cpu_self=(r1.user - r0.user) + (r1.system - r0.system),
        cpu_children=(r1.children_user - r0.children_user) + (r1.children_system - r0.children_system),
        children=log,
        state=outcomes[-1].run_state.value if outcomes else "no outcome",
        profile=text,
    )


# -- report ------------------------------------------------------------------------------


def report(phases: int, raw_times: tuple[float, float], sup: SupervisorTimes) -> str:
    raw_setup, raw_loop = raw_times
    raw_total = raw_setup + raw_loop
    sup_total = sup.start + sup.loop
    ratio = sup_total / raw_total if raw_total else float("inf")
    phase_ratio = (sup.loop / phases) / (raw_loop / phases) if raw_loop else float("inf")
    n_children, t_children = sup.children.total()
    n_git, t_git = sup.children.total("git ")
    lines = [
        f"phases: {phases}   (run ended {sup.state})",
        "",
        f"{'':<12}{'total s':>10}{'setup s':>10}{'per phase s':>13}",
        f"{'raw git':<12}{raw_total:>10.3f}{raw_setup:>10.3f}{raw_loop / phases:>13.4f}",
        f"{'supervisor':<12}{sup_total:>10.3f}{sup.start:>10.3f}{sup.loop / phases:>13.4f}",
        "",
        f"ratio supervisor/raw: {ratio:.1f}x total, {phase_ratio:.1f}x per phase "
        f"(target < {TARGET_RATIO:g}: {'met' if ratio < TARGET_RATIO else 'NOT met'})",
        "",
        "supervisor breakdown (start_run + run_to_end):",
        f"  child processes  {n_children:>5} calls ({n_children / phases:.1f}/phase)  {t_children:8.3f} s wall",
        f"    git            {n_git:>5} calls ({n_git / phases:.1f}/phase)  {t_git:8.3f} s wall",
    ]
    for kind in sorted(sup.children.count, key=lambda k: -sup.children.seconds[k]):
        if kind.startswith("git "):
            lines.append(f"      {kind:<18}{sup.children.count[kind]:>5} calls  {sup.children.seconds[kind]:8.3f} s")
    for kind in sorted(k for k in sup.children.count if not k.startswith("git ")):
        lines.append(f"    {kind:<15}{sup.children.count[kind]:>5} calls  {'':>15}{sup.children.seconds[kind]:8.3f} s")
    lines += [
        f"  fsyncs           {sup.children.fsyncs:>5} calls ({sup.children.fsyncs / phases:.1f}/phase)",
        f"  python (rest)    {sup_total - t_children:31.3f} s wall",
        f"  CPU: this process {sup.cpu_self:.3f} s, children {sup.cpu_children:.3f} s",
        f"  one-time imports (paid by every `doit` invocation, not timed above): {sup.imports:.3f} s",
    ]
    return "\n".join(lines)


# -- the table ---------------------------------------------------------------------

STARTUP_TARGETS = {"status": 0.2, "validate": 0.3}
TARGET_GIT_CALLS = 9
TARGET_FSYNCS = 12
TARGET_PYTHON_MS = 20


def startup(workspace: Path, repeat: int = 5) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds of `python -m pipeline status|validate --run bench`, each the best
    of `repeat` (CPU: user + system of the child; on a loaded machine it moves far less than
    the wall time)."""
    import resource

    out = {}
    for command in STARTUP_TARGETS:
        wall, cpu = float("inf"), float("inf")
        for _ in range(repeat):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "pipeline", command, "--run", RUN_ID],
                cwd=workspace,
                capture_output=True,
                text=True,
                check=False,
            )
            wall = min(wall, time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = min(cpu, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            if done.returncode != 0:
                raise SystemExit(f"bench: `{command} --run {RUN_ID}` failed:\n{done.stdout}{done.stderr}")
        out[command] = (wall, cpu)
    return out


def table(
    phases: int, raw_times: tuple[float, float], sup: SupervisorTimes, starts: dict[str, tuple[float, float]]
) -> str:
    """The figures of issue 15's table that this bench measures: figure | now | target."""
    raw_phase = raw_times[1] / phases
    sup_phase = sup.loop / phases
    n_git, _ = sup.children.total("git ")
    _, t_children = sup.children.total()
    python_ms = (sup.start + sup.loop - t_children) / phases * 1000
    rows = [
        (
            f"supervisor per phase vs raw git per phase ({phases} phases)",
            f"{sup_phase:.3f} s vs {raw_phase:.4f} s = {sup_phase / raw_phase:.1f}x",
            f"<= {TARGET_RATIO:g}x",
            sup_phase / raw_phase <= TARGET_RATIO,
        ),
        (
            "git calls per phase (raw needs 7)",
            f"{n_git / phases:.1f}",
            f"<= {TARGET_GIT_CALLS}",
            n_git / phases <= TARGET_GIT_CALLS,
        ),
        (
            "fsyncs per phase",
            f"{sup.children.fsyncs / phases:.1f}",
            f"<= {TARGET_FSYNCS}",
            sup.children.fsyncs / phases <= TARGET_FSYNCS,
        ),
        (
            "Python time per phase outside child processes (fsync waits included)",
            f"{python_ms:.0f} ms",
            f"<= {TARGET_PYTHON_MS} ms",
            python_ms <= TARGET_PYTHON_MS,
        ),
    ]
    for command, target in STARTUP_TARGETS.items():
        rows.append(
            (
                f"`doit {command} --run R` (best of 5, a fresh process)",
                f"{starts[command][0]:.2f} s wall, {starts[command][1]:.2f} s CPU",
                f"<= {target:g} s",
                starts[command][0] <= target,
            )
        )
    width = max(len(r[0]) for r in rows)
    lines = [f"{'figure':<{width}}  {'now':<28}  target", f"{'-' * width}  {'-' * 28}  {'-' * 16}"]
    lines += [f"{f:<{width}}  {now:<28}  {t} {'met' if ok else 'NOT met'}" for f, now, t, ok in rows]
    return "\n".join(lines)


def callers(phases: int, log: ChildLog) -> str:
    lines = [f"git calls by product caller -> GitCli method (git subcommand), per phase over {phases} phases:"]
    for (caller, method, kind), n in sorted(log.callers.items(), key=lambda item: (-item[1], item[0])):
        lines.append(f"  {n / phases:6.1f}  {caller} -> {method} ({kind})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", type=int, default=10, help="phases on each side (default 10)")
    parser.add_argument("--agent", choices=["python", "sh"], default="python", help="the builder (default python)")
    parser.add_argument(
        "--target",
        choices=["self", "separate"],
        default="self",
        help="self: the workspace is the target (the record rides in the branch, the default); "
        "separate: the plan targets another repository",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile part (b); top 25 by cumulative time")
    parser.add_argument(
        "--tmp",
        default=None,
        help="directory for the temp repositories (default: the system's; /dev/shm puts both sides "
        "on tmpfs, where an fsync costs next to nothing)",
    )
    args = parser.parse_args(argv)
    if args.phases < 1:
        parser.error("--phases must be at least 1")

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    with tempfile.TemporaryDirectory(prefix="autopack-bench-", dir=args.tmp) as tmp:
        root = Path(tmp)
        isolate_git(root)
        raw_times = raw(root / "a", args.phases)
        (root / "b").mkdir()
        sup = supervisor(root / "b", args.phases, args.agent, args.target, args.profile)
        starts = startup(root / "b" / "ws") if sup.state == "DONE_SUCCESS" else {}
    print(report(args.phases, raw_times, sup))
    if starts:
        print(f"\nissue 15's figures (this run, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}):\n")
        print(table(args.phases, raw_times, sup, starts))
    if sup.profile:
        print("\ncProfile of part (b), top 25 by cumulative time:\n")
        print(sup.profile)
        print(callers(args.phases, sup.children))
    if sup.state != "DONE_SUCCESS":
        print(f"bench: the run ended {sup.state}, not DONE_SUCCESS: the figures are not comparable", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
