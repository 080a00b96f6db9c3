"""The sandbox every untrusted step runs in: builder, auditor, CI steps, static checks.

On Linux with bubblewrap (`bwrap`, Debian package `bubblewrap`) a step sees the whole
filesystem read-only, except its worktree, a private temp dir and the few scratch paths
its caller names (where an agent writes its result, where a CI step writes its JUnit
file). The run record, the other runs, the workspace and the user's `.git` stay read-only
even when they lie inside a writable path (a run working in place). It gets a private PID
namespace (no view of the supervisor's processes or their environments), no
capabilities, its own session, and dies with the supervisor; when its first process
exits, the kernel kills every process left in its namespace, so nothing it started (a
`setsid` writer included) outlives the step. The network stays available unless the
ruleset switches it off for the step (`sandbox.no_network`).

The worktree's `.git` file points into the user's `.git/worktrees/<name>`, which stays
read-only: inside the sandbox an agent can read history, `git diff` and `git status`, but
`git commit` fails. Nothing is lost by that: the supervisor takes the working tree's
diff against the attempt's base, committed or not.

Where bubblewrap is missing or unusable, steps run unsandboxed and the run records the
isolation level `none`; the supervisor's own checks (`pipeline.run.guard`) stay on either way.
A ruleset with `sandbox.isolation: required` refuses to run without the sandbox.
`AUTOPACK_SANDBOX=off` forces the fallback (for machines where bwrap misbehaves, and for
the tests of the fallback).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.core import proc
from pipeline.core.errors import EnvironmentProblem

Isolation = Literal["bwrap", "none"]
ISOLATION_BWRAP: Isolation = "bwrap"
ISOLATION_NONE: Isolation = "none"
ISOLATION_ENV = "AUTOPACK_ISOLATION"  # told to the step: its isolation level
SWITCH_ENV = "AUTOPACK_SANDBOX"  # "off": always the fallback
INSTALL_FIX = (
    "install bubblewrap (`apt-get install -y bubblewrap`) or set sandbox.isolation: auto in profiles/ruleset.yaml"
)
_PROBE_TIMEOUT_S = 20.0
_HEX_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a sha1 or sha256 object id


@dataclass(frozen=True)
class Jail:
    """How one untrusted step is confined.

    `writable`: bound read-write (the worktree, the caller's scratch paths);
    `readonly`: bound read-only again over a writable parent (the record, a `.git` dir);
    `network`: False cuts the step off the network (sandbox only).
    """

    level: Isolation
    writable: tuple[Path, ...] = ()
    readonly: tuple[Path, ...] = ()
    network: bool = True
    tmp: Path | None = field(default=None, compare=False)
    git_over: tuple[Path, Path] | None = field(default=None, compare=False)  # (private git entry, worktree/.git)

    def argv(self, command: str | Sequence[str], cwd: Path) -> str | list[str]:
        """The command as it must be started: unchanged without the sandbox."""
        if self.level != ISOLATION_BWRAP:
            return command if isinstance(command, str) else list(command)
        inner = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        return [*bwrap_prefix(self, cwd), "--", *inner]

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """The step's environment: TMPDIR is its private temp dir, and AUTOPACK_ISOLATION says
        which isolation the step has (a CLI with a sandbox of its own, which cannot nest in
        bubblewrap, can leave the confinement to it: the codex preset does)."""
        extra = {ISOLATION_ENV: self.level, **({"TMPDIR": str(self.tmp)} if self.tmp is not None else {})}
        return {**env, **extra}


def bwrap_prefix(jail: Jail, cwd: Path) -> list[str]:
    """The bwrap options for `jail` (order matters: later mounts cover earlier ones)."""
    args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc", "--cap-drop", "ALL"]
    if not jail.network:
        args.append("--unshare-net")
    args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/dev/shm"]
    mounts = [(p, "--bind") for p in _existing(jail.writable)] + [(p, "--ro-bind") for p in _existing(jail.readonly)]
    if jail.tmp is not None:
        mounts.append((jail.tmp.resolve(), "--bind"))
    # Parents before children (a child mount covers its part of the parent); at one
    # path, read-only wins.
    for path, option in sorted(mounts, key=lambda m: (len(m[0].parts), m[1] == "--ro-bind", str(m[0]))):
        args += [option, str(path), str(path)]
    if jail.git_over is not None:  # last: it covers the worktree's `.git` whatever lies beneath
        args += ["--ro-bind", str(jail.git_over[0]), str(jail.git_over[1])]
    args += ["--chdir", str(cwd.resolve())]
    return args


def _existing(paths: Iterable[Path]) -> list[Path]:
    """Resolved, existing, de-duplicated paths."""
    return sorted({p.resolve() for p in paths if p.exists()})


@functools.cache
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot sandbox a step on this machine, or None when it can."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap (bwrap) is not installed"
    probe = Jail(ISOLATION_BWRAP, network=False)
    res = proc.run(probe.argv(["true"], Path("/")), env=proc.scrubbed_env(), timeout_s=_PROBE_TIMEOUT_S)
    if not res.ok:
        detail = (res.stderr or res.stdout).strip().splitlines()
        return f"bwrap cannot start a sandbox here: {detail[-1] if detail else f'exit {res.returncode}'}"
    return None


def decide(required: bool, source: Mapping[str, str] | None = None) -> tuple[Isolation, str]:
    """The isolation level steps get, and why. Raises when `required` and none is usable."""
    env = os.environ if source is None else source
    if env.get(SWITCH_ENV, "").lower() in ("off", "0", "no", "none"):
        reason = f"{SWITCH_ENV}=off"
    else:
        problem = bwrap_problem()
        if problem is None:
            return ISOLATION_BWRAP, "bubblewrap"
        reason = problem
    if required:
        raise EnvironmentProblem(
            f"the ruleset requires a sandbox (sandbox.isolation: required) but none is usable: {reason}",
            INSTALL_FIX,
        )
    return ISOLATION_NONE, reason


@contextmanager
def jail_for(
    level: Isolation,
    worktree: Path,
    *,
    writable: Iterable[Path] = (),
    readonly: Iterable[Path] = (),
    network: bool = True,
) -> Iterator[Jail]:
    """A jail with a private temp dir (and a private git dir) removed when the step is over."""
    tmp = Path(tempfile.mkdtemp(prefix="autopack-step-")) if level == ISOLATION_BWRAP else None
    try:
        over = private_git(worktree, tmp) if tmp is not None else None
        yield Jail(level, (worktree, *writable), tuple(readonly), network, tmp, over)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def run(
    jail: Jail,
    command: str | Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float | None,
    log_path: Path | None = None,
) -> proc.ProcResult:
    """`proc.run` inside `jail`. Without the sandbox, whatever the step detached from its
    process group (and so outlived it) is found and killed when it ends."""
    if jail.level == ISOLATION_BWRAP:
        return proc.run(jail.argv(command, cwd), cwd=cwd, env=jail.env(env), timeout_s=timeout_s, log_path=log_path)
    sweep = _orphans_adopted()
    try:
        return proc.run(command, cwd=cwd, env=jail.env(env), timeout_s=timeout_s, log_path=log_path)
    finally:
        if sweep:
            proc.kill_orphans()


@functools.cache
def _orphans_adopted() -> bool:
    return proc.adopt_orphans()


@dataclass(frozen=True)
class Confinement:
    """What a run's untrusted steps get: the level decided at the start of the session,
    the paths that stay read-only inside writable ones, the steps cut off the network
    (a kind: builder, auditor, ci, static_checks, or a CI step's name) and the extra
    writable paths the ruleset grants (an agent CLI's config dir)."""

    level: Isolation = ISOLATION_NONE
    readonly: tuple[Path, ...] = ()
    no_network: frozenset[str] = frozenset()
    writable: tuple[Path, ...] = ()

    def network(self, kind: str, name: str | None = None) -> bool:
        return kind not in self.no_network and (name is None or name not in self.no_network)

    @contextmanager
    def jail(self, worktree: Path, kind: str, name: str | None = None, writable: Iterable[Path] = ()) -> Iterator[Jail]:
        with jail_for(
            self.level,
            worktree,
            writable=(*self.writable, *writable),
            readonly=self.readonly,
            network=self.network(kind, name),
        ) as jail:
            yield jail


UNCONFINED = Confinement()


# -- the step's private git directory -------------------------------------------------------


def private_git(worktree: Path, tmp: Path) -> tuple[Path, Path] | None:
    """A git dir of the step's own, laid over the worktree's `.git` inside the sandbox.

    It borrows the user's objects read-only (`objects/info/alternates`) and starts from the
    worktree's HEAD and index, so `git status`, `git diff`, `git commit`, branches and the
    stash all work, and all of them write only here. The supervisor takes the working
    tree's diff; what the step did to this git dir is thrown away with it.
    Returns (what to bind, where), or None when the worktree has no git dir to copy."""
    dot_git = worktree / ".git"
    own, common = git_dirs(dot_git)
    if own is None or common is None:
        return None
    private = tmp / ".autopack-git"
    # The fewest directories git needs (objects/, refs/): the branch goes in packed-refs,
    # not a loose ref in refs/heads/<its path>/. Every directory is made and removed again
    # around every step, and a directory operation is a journal write on the disk.
    (private / "objects" / "info").mkdir(parents=True)
    (private / "refs").mkdir()
    (private / "objects" / "info" / "alternates").write_text(f"{common / 'objects'}\n")
    head = (own / "HEAD").read_text().strip()
    (private / "HEAD").write_text(head + "\n")
    if head.startswith("ref: "):
        ref = head[5:].strip()
        sha = _resolve_ref(common, ref)
        if sha and _HEX_ID.fullmatch(sha) and ref.startswith("refs/") and not any(c.isspace() for c in ref):
            (private / "packed-refs").write_text(f"{sha} {ref}\n")
    if (own / "index").is_file():
        shutil.copyfile(own / "index", private / "index")
    (private / "config").write_text(_private_config(common))
    if dot_git.is_dir():
        return private, dot_git.resolve()
    gitfile = tmp / ".autopack-gitfile"
    gitfile.write_text(f"gitdir: {private}\n")
    return gitfile, dot_git.resolve()


def git_dirs(dot_git: Path) -> tuple[Path | None, Path | None]:
    """(this checkout's own git dir, the common git dir), read as files."""
    if dot_git.is_dir():
        return dot_git.resolve(), dot_git.resolve()
    try:
        line = dot_git.read_text(errors="replace").strip()
    except OSError:
        return None, None
    if not line.startswith("gitdir:"):
        return None, None
    own = Path(line.split(":", 1)[1].strip())
    own = (own if own.is_absolute() else dot_git.parent / own).resolve()
    try:
        return own, (own / (own / "commondir").read_text().strip()).resolve()
    except OSError:
        return own, own


def _resolve_ref(common: Path, ref: str) -> str | None:
    loose = common / ref
    if loose.is_file():
        return loose.read_text().strip() or None
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(errors="replace").splitlines():
            sha, _, name = line.partition(" ")
            if name.strip() == ref:
                return sha
    return None


def _private_config(common: Path) -> str:
    """Core settings only (no hooks, filters or includes of the user's), keeping the
    repository format so the borrowed objects read right."""
    text = "[core]\n\trepositoryformatversion = 0\n\tbare = false\n\tlogallrefupdates = true\n"
    try:
        user = (common / "config").read_text(errors="replace").lower()
    except OSError:
        return text
    if "objectformat = sha256" in user:
        text = text.replace("= 0", "= 1", 1) + "[extensions]\n\tobjectformat = sha256\n"
    return text
