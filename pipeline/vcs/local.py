"""LocalGitCli: the GitAdapter over the host's git binary, the only code that runs git.

One module on purpose: LocalGitCli is the one class that runs git; its methods share the
worktree checks and the process-saving helpers below, and splitting the class would scatter
one protocol's implementation.

`LocalGitCli(repo)` works on the user's checkout `repo` without ever changing its working
tree, index, current branch or stash: everything a run changes happens in linked worktrees
that this module creates, and every mutating operation first checks that the path it is
given really is such a worktree (a deleted `.git` file would otherwise make git walk up to
the user's checkout and `reset_to` would wipe it). git verifies a worktree once per
`LocalGitCli`; every later use re-checks, without a process, that its `.git` file still
holds the same pointer (anything else means git verifies it again).

A phase makes many git calls, so each costs as few processes as it can: ref names are
checked in Python (`valid_ref_name`, git's rules), HEAD is read from git's own files when
it is a plain loose ref, `reset_to` asks `git status` whether there is anything to reset,
`apply` needs no `--check` run (git apply is all or nothing), `reapply` keeps a patch that
one `git status` shows is still applied exactly, committed symlinks are read from the index
file, and errors are worked out after a failure rather than checked for before every call.

git runs through `pipeline.core.proc.run` with a list argv, a scrubbed environment and a fixed
identity, and with the user's settings that would change our output or commits overridden.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import proc
from pipeline.core.errors import GitError
from pipeline.vcs.adapter import (
    IN_PLACE_BRANCH_PREFIX,
    SNAPSHOT_TRAILER,
    ApplyResult,
    IntegrationStatus,
    RefsState,
    WorktreeEntry,
    valid_ref_name,
)
from pipeline.vcs.quoting import take_quoted

MIN_GIT_VERSION = (2, 25)


GIT_TIMEOUT_S = 600.0


DEFAULT_GIT_NAME = "Autopack Supervisor"


DEFAULT_GIT_EMAIL = "autopack@localhost"


INSTALL_FIX = (
    "install git and make sure `git` is on PATH: `apt-get install git` (Debian/Ubuntu); "
    "in a container image: `RUN apt-get update && apt-get install -y "
    "--no-install-recommends git`"
)


# GIT_DIR, GIT_WORK_TREE, GIT_INDEX_FILE inherited from a hook would redirect every command
# to another repository, so only these GIT_* names survive.
GIT_ENV_ALLOW = ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM", "GIT_SSH_COMMAND", "GIT_ASKPASS")


# User settings that would make patches unappliable, make commits prompt for a signing
# key, run the user's hooks (or an fsmonitor daemon, or a background gc holding locks)
# inside our operations, or change output that is parsed here.
_CONFIG_OVERRIDES = (
    f"core.hooksPath={os.devnull}",
    "core.fsmonitor=false",
    "gc.auto=0",
    "maintenance.auto=false",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "tag.forceSignAnnotated=false",
    "log.showSignature=false",
    "diff.noprefix=false",
    "diff.mnemonicPrefix=false",
    "diff.relative=false",
    "advice.detachedHead=false",
    "core.quotePath=true",
    "protocol.ext.allow=never",
    "submodule.recurse=false",
)


_TRAILER_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


_STATUS_LINES_SHOWN = 5


_PATHSPEC_MAGIC = re.compile(r"[*?\[\]\\\0\n\r]")


@dataclass(frozen=True)
class _Checked:
    """A worktree verified by LocalGitCli._worktree, with its own git directory.

    `dotgit` is the content of a linked worktree's `.git` file when it was verified
    (None where `.git` is a directory: the user's checkout, never cached).
    """

    path: Path
    git_dir: Path
    main: bool
    dotgit: bytes | None = None


@dataclass(frozen=True)
class _InPlace:
    """A checkout the run works in directly (`LocalGitCli.adopt_checkout`): only while it
    has `branch` checked out, never touching `keep` (the live run record) nor the ignored
    entries `kept` that were there when it was adopted (the job's tools and caches)."""

    branch: str
    keep: str
    kept: frozenset[str] = frozenset()

    @property
    def outside(self) -> tuple[str, ...]:
        """The pathspec of everything but `keep`."""
        return (f":(exclude){self.keep}",)

    @property
    def clean_exceptions(self) -> tuple[str, ...]:
        """`git clean -x` arguments sparing the `kept` entries."""
        return tuple(arg for path in sorted(self.kept) for arg in ("-e", _literal_ignore_pattern(path)))


def git_env(source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child environment for git: scrubbed, non-interactive, with the fixed identity."""
    src = os.environ if source is None else source
    name = src.get("AUTOPACK_GIT_NAME") or DEFAULT_GIT_NAME
    email = src.get("AUTOPACK_GIT_EMAIL") or DEFAULT_GIT_EMAIL
    extra = {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }
    return proc.scrubbed_env((*proc.BASE_ENV_ALLOW, *GIT_ENV_ALLOW), extra, src)


# The versions `check_available` found, by the git binary that said so: its real path,
# inode and mtime (a git upgraded or replaced in place is asked again).
_VERSIONS: dict[tuple[str, int, int], str] = {}


def _git_binary(env: Mapping[str, str]) -> tuple[str, int, int] | None:
    found = shutil.which("git", path=env.get("PATH"))
    if found is None:
        return None
    try:
        st = os.stat(found)
    except OSError:
        return None
    return os.path.realpath(found), st.st_ino, st.st_mtime_ns


def _tail(text: str, lines: int = 6) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "; ".join(kept[-lines:]) or "(no output)"


def _failure(res: proc.ProcResult) -> str:
    return _tail(res.stderr or res.stdout)


def _version_tuple(text: str) -> tuple[int, int] | None:
    found = re.search(r"(\d+)\.(\d+)", text)
    return (int(found.group(1)), int(found.group(2))) if found else None


class LocalGitCli:
    """GitAdapter over the host's git binary, for the checkout at `repo`."""

    def __init__(self, repo: Path) -> None:
        self.repo = Path(repo)
        self._top: Path | None = None
        self._common: Path | None = None
        # Linked worktrees verified by `_worktree`, by the path they were given as; an
        # entry is reused only while the worktree's `.git` file is unchanged.
        self._checked: dict[Path, _Checked] = {}
        # Worktrees this instance knows to hold changes (a collected or applied patch):
        # `reset_to` resets them without asking `git status` first. The hint only ever
        # makes a reset do more work, never less.
        self._dirty: set[Path] = set()
        # Checkouts adopted for working in place, by resolved path (`adopt_checkout`).
        self._in_place: dict[Path, _InPlace] = {}

    # -- running git -------------------------------------------------------------------

    def _run(self, *args: str, cwd: Path | None = None, input_text: str | None = None) -> proc.ProcResult:
        where = cwd if cwd is not None else self.repo
        if not where.is_dir():
            raise GitError(
                f"cannot run git in {where}: the directory does not exist",
                fix="check the path (target.repo in the plan, or the run's worktree)",
            )
        env = git_env()
        overrides = [arg for setting in _CONFIG_OVERRIDES for arg in ("-c", setting)]
        argv = ["git", "--no-optional-locks", *overrides, *args]
        res = proc.run(argv, cwd=where, env=env, timeout_s=GIT_TIMEOUT_S, input_text=input_text)
        if res.returncode == 127 and shutil.which("git", path=env.get("PATH")) is None:
            raise GitError("git is not installed (no `git` on PATH)", fix=INSTALL_FIX)
        if res.timed_out:
            raise GitError(
                f"git {args[0]} timed out after {GIT_TIMEOUT_S:.0f}s in {where}",
                fix="look for a hung git process or a stale lock file under .git and retry",
            )
        return res

    def _ok(
        self,
        *args: str,
        cwd: Path | None = None,
        input_text: str | None = None,
        fix: str = "fix what git reports in the repository, then retry",
    ) -> str:
        res = self._run(*args, cwd=cwd, input_text=input_text)
        if not res.ok:
            where = cwd if cwd is not None else self.repo
            command = args[2] if args[0] == "-c" else args[0]
            raise GitError(f"git {command} failed in {where}: {_failure(res)}", fix=fix)
        return res.stdout

    # -- the repository ----------------------------------------------------------------

    def check_available(self) -> str:
        """The git version (e.g. "2.39.5"); GitError if git is missing or too old. Asked
        once per process and git binary (start_run's preflight and start both check)."""
        binary = _git_binary(git_env())
        if binary is not None and binary in _VERSIONS:
            return _VERSIONS[binary]
        res = self._run("--version", cwd=self.repo if self.repo.is_dir() else Path(os.sep))
        version = _version_tuple(res.stdout)
        if not res.ok or version is None:
            raise GitError(f"`git --version` failed: {_failure(res)}", fix=INSTALL_FIX)
        if version < MIN_GIT_VERSION:
            want = ".".join(map(str, MIN_GIT_VERSION))
            raise GitError(
                f"git {res.stdout.strip()} is too old; Autopack needs git {want} or newer",
                fix=INSTALL_FIX.replace("install git", "install a newer git", 1),
            )
        found = res.stdout.strip().removeprefix("git version ").strip()
        if binary is not None:
            _VERSIONS[binary] = found
        return found

    def toplevel(self) -> Path:
        """The top directory of the user's checkout."""
        if self._top is None:
            self._top, self._common = self._locate_repo()
        return self._top

    def _common_dir(self) -> Path:
        if self._common is None:
            self._top, self._common = self._locate_repo()
        return self._common

    def _locate_repo(self) -> tuple[Path, Path]:
        if not self.repo.is_dir():
            raise GitError(
                f"target repository {self.repo} does not exist",
                fix="point target.repo in the plan at an existing git checkout",
            )
        res = self._run("rev-parse", "--show-toplevel", "--git-common-dir")
        if not res.ok:
            err = _failure(res)
            fix = f"run `git init` in {self.repo}, or point target.repo in the plan at a git checkout"
            if "dubious ownership" in err:
                fix = f"trust it: `git config --global --add safe.directory {self.repo}`"
            raise GitError(f"{self.repo} is not a git repository ({err})", fix=fix)
        top, common = res.stdout.splitlines()[:2]
        return Path(top).resolve(), (self.repo / common).resolve()

    def current_branch(self) -> str:
        """The branch checked out in the user's checkout."""
        self.toplevel()
        res = self._run("symbolic-ref", "--quiet", "--short", "HEAD")
        if not res.ok:
            at = self.resolve("HEAD") or "no commit"
            raise GitError(
                f"{self.repo} is on a detached HEAD (at {at[:12]}), so there is no base branch",
                fix="check out a branch there (`git switch <branch>`) or set target.base in the plan",
            )
        return res.stdout.strip()

    def resolve(self, ref: str) -> str | None:
        """The commit `ref` names in the repository, or None."""
        if not _safe_ref_arg(ref):
            return None
        self.toplevel()
        res = self._run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        return res.stdout.strip() if res.ok else None

    def branch_exists(self, name: str) -> bool:
        return _safe_ref_arg(name) and self.resolve(f"refs/heads/{name}") is not None

    def _branches(self) -> list[str]:
        out = self._ok("for-each-ref", "--format=%(refname:short)", "refs/heads")
        return out.split()

    def _check_ref_name(self, name: str, kind: str) -> None:
        prefix = "refs/heads/" if kind == "branch" else "refs/tags/"
        if not (_safe_ref_arg(name) and valid_ref_name(prefix + name)):
            raise GitError(
                f"'{name}' is not a valid git {kind} name (in {self.repo})",
                fix="use letters, digits, '.', '_', '-' and '/' (see `git help check-ref-format`)",
            )

    def _require_commit(self, ref: str, what: str) -> str:
        sha = self.resolve(ref)
        if sha is None:
            raise GitError(
                f"{what} '{ref}' does not exist in {self.repo}",
                fix="check the run record against the repository (was the branch or commit "
                "removed, or is this a different clone?)",
            )
        return sha

    def _sha_or_resolve(self, ref: str, what: str) -> str:
        """A full sha as it is (the git command it goes to fails if it does not exist; the
        caller then names it with `_require_commit`), anything else resolved now."""
        return ref if _is_full_sha(ref) else self._require_commit(ref, what)

    # -- worktrees ---------------------------------------------------------------------

    def worktrees(self) -> list[WorktreeEntry]:
        """Every worktree registered in the repository, the main checkout first."""
        self.toplevel()
        out = self._ok("worktree", "list", "--porcelain")
        entries: list[WorktreeEntry] = []
        for block in out.strip().split("\n\n"):
            fields = _porcelain_fields(block)
            if "worktree" not in fields:
                continue
            branch = fields.get("branch")
            entries.append(
                WorktreeEntry(
                    path=Path(fields["worktree"]).resolve(),
                    head=fields.get("HEAD"),
                    branch=branch.removeprefix("refs/heads/") if branch else None,
                    main=not entries,
                    locked="locked" in fields,
                )
            )
        return entries

    def ensure_worktree(self, branch: str, base: str, path: Path) -> str:
        """A linked worktree at `path` on `branch` (created from `base` if new); its HEAD.

        Idempotent: an existing worktree on `branch` is reused as it is; one whose directory
        was deleted is re-created; one left on another branch (an agent switched) is forced
        back onto `branch`, discarding its uncommitted changes.
        """
        self.toplevel()
        self._check_ref_name(branch, "branch")
        target = Path(path).resolve()
        entries = self.worktrees()
        entry = next((e for e in entries if e.path == target), None)
        if entry is not None and (entry.main or target == self.toplevel()):
            raise GitError(
                f"{target} is the user's checkout of {self.repo}, not a run worktree",
                fix="give the run its own worktree path (default .autopack/worktrees/<run_id>)",
            )
        if entry is not None and not target.is_dir():
            self._forget_worktree(target)
            entry = None
        if not self.branch_exists(branch):
            self._create_branch(branch, base)
        if entry is None:
            self._free_branch(branch, entries, target)
            self._add_worktree(target, branch)
        elif entry.branch != branch:
            self._forget_checked(target)
            self._ok("checkout", "--force", "--quiet", branch, "--", cwd=target)
        return self.head(target)

    def _create_branch(self, branch: str, base: str) -> None:
        sha = self.resolve(base)
        if sha is None:
            existing = ", ".join(self._branches()) or "none"
            raise GitError(
                f"base branch '{base}' does not exist in {self.repo}",
                fix=f"set target.base in the plan to an existing branch (existing: {existing}), "
                f"or create it (e.g. `git branch {base} origin/{base}`)",
            )
        self._ok("branch", "--no-track", branch, sha)

    def _free_branch(self, branch: str, entries: Sequence[WorktreeEntry], target: Path) -> None:
        holder = next((e for e in entries if e.branch == branch and e.path != target), None)
        if holder is None:
            return
        if not holder.path.exists() and not holder.locked:
            self._forget_worktree(holder.path)
            return
        raise GitError(
            f"branch '{branch}' is already checked out at {holder.path} in {self.repo}",
            fix=f"use that worktree for the run, or free the branch there (check out another "
            f"branch, or `git worktree remove {holder.path}`)",
        )

    def _forget_checked(self, path: Path) -> None:
        """Drop what is cached about the worktree at `path` (it is re-created or removed)."""
        target = Path(path).resolve()
        for key in [k for k, c in self._checked.items() if c.path == target or k == Path(path)]:
            del self._checked[key]
        self._dirty.discard(target)

    def _add_worktree(self, target: Path, branch: str) -> None:
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise GitError(
                f"cannot create the worktree {target}: it already exists and is not a worktree of {self.repo}",
                fix="remove that path or choose another worktree location",
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        self._forget_checked(target)
        self._ok("worktree", "add", "--quiet", str(target), branch)

    def _forget_worktree(self, path: Path) -> None:
        self._forget_checked(path)
        # Twice --force: also drops a locked registration whose directory is gone.
        self._ok("worktree", "remove", "--force", "--force", str(path))

    def remove_worktree(self, path: Path) -> None:
        """Remove a run worktree (its branch stays); nothing to do if it is already gone."""
        target = Path(path).resolve()
        entry = next((e for e in self.worktrees() if e.path == target), None)
        if entry is not None and (entry.main or target == self.toplevel()):
            raise GitError(
                f"refusing to remove {target}: it is the user's checkout of {self.repo}",
                fix="pass the run's worktree path (default .autopack/worktrees/<run_id>)",
            )
        if entry is not None:
            self._forget_worktree(target)
        elif target.exists():
            raise GitError(
                f"{target} is not a worktree of {self.repo}; it was left in place",
                fix="delete it by hand if nothing in it is needed",
            )

    # -- working in place --------------------------------------------------------------

    def adopt_checkout(self, checkout: Path, branch: str, keep: str, interrupted: bool = False) -> bool:
        """Work in place in `checkout` when it has `branch` (a run's integration branch)
        checked out: a CI job that checked out the branch finds the run's live record there
        and needs no second worktree (docs/architecture.md, The run directory). True when adopted; False when anything
        else is checked out there (a base branch, another branch, a detached HEAD): the run
        then uses its linked worktree and `checkout` stays out of bounds.

        In an adopted checkout the run's operations never touch `keep` (the live record,
        `runs/<run_id>`, relative to the checkout) nor the git-ignored entries it has now (a
        virtualenv, caches, doit's database): resets restore and clean everything else,
        ignored leftovers of agents and CI steps included (a stale `__pycache__` would
        outlive its source); patches leave `keep` out; commits happen only while `branch`
        is still checked out. Refuses (GitError) a checkout with changes outside `keep` (they
        might be someone's work), unless `interrupted` (the run's last lock holder died
        holding it: they are what its step left, and the next reset removes them), and one
        whose `<keep>/.lock` git would commit.
        """
        self._check_ref_name(branch, "branch")
        if not branch.startswith(IN_PLACE_BRANCH_PREFIX):
            raise GitError(
                f"refusing to work in place on '{branch}': only a run's integration branch "
                f"({IN_PLACE_BRANCH_PREFIX}<run_id>) is worked on in place",
                fix="pass the run's branch",
            )
        parts = keep.split("/")
        if keep.startswith(("-", ":")) or any(p in ("", ".", "..") for p in parts) or _PATHSPEC_MAGIC.search(keep):
            raise GitError(f"'{keep}' is not a plain relative path in the checkout", fix="pass runs/<run_id>")
        wt = Path(checkout)
        quick = _head_file_branch(wt / ".git")
        if quick is not None and quick != branch:
            self._in_place.pop(wt.resolve(), None)
            return False  # the common case (a developer's checkout on main) costs no git call
        checked = self._verify_worktree(wt)
        if self._on_branch(checked) != branch:
            self._in_place.pop(checked.path, None)
            return False
        outside = _InPlace(branch, keep).outside
        status = self._ok(
            "status",
            "--porcelain",
            "-z",
            "--no-renames",
            "--untracked-files=normal",
            "--ignored=traditional",
            "--",
            *outside,
            cwd=wt,
        )
        entries = [entry for entry in status.split("\0") if entry]
        changed = [entry[3:] for entry in entries if not entry.startswith("!! ")]
        if changed and not interrupted:
            shown = ", ".join(changed[:_STATUS_LINES_SHOWN])
            more = f" (and {len(changed) - _STATUS_LINES_SHOWN} more)" if len(changed) > _STATUS_LINES_SHOWN else ""
            raise GitError(
                f"{checked.path} has the run's branch '{branch}' checked out, so the run would work in "
                f"place there, but it also has changes outside {keep}/: {shown}{more}",
                fix="working in place resets that checkout: commit or stash them, or check out another "
                "branch there (the run then uses its own linked worktree); if an interrupted phase left "
                f"them, discard them: `git checkout -- . ':!{keep}' && git clean -fd -- . ':!{keep}'`",
            )
        if not self._run("check-ignore", "--quiet", f"{keep}/.lock", cwd=wt).ok:
            raise GitError(
                f"{checked.path} does not ignore {keep}/.lock, so working in place would commit the run lock",
                fix="add `runs/*/.lock` and `runs/*/**/*.tmp.*` to .gitignore (`python -m pipeline init` does) "
                "and commit it",
            )
        kept = frozenset(entry[3:] for entry in entries if entry.startswith("!! "))
        self._in_place[checked.path] = _InPlace(branch, keep, kept)
        self._checked[wt] = checked
        return True

    def _on_branch(self, checked: _Checked) -> str | None:
        """The branch checked out in a verified worktree (None: a detached HEAD)."""
        quick = _head_file_branch(checked.git_dir)
        if quick is not None:
            return quick
        res = self._run("symbolic-ref", "--quiet", "HEAD", cwd=checked.path)
        name = res.stdout.strip()
        return name.removeprefix("refs/heads/") if res.ok and name.startswith("refs/heads/") else None

    def _require_in_place_branch(self, checked: _Checked) -> None:
        """In an adopted checkout, commit only while the run's branch is checked out."""
        spot = self._in_place.get(checked.path)
        if spot is None:
            return
        on = self._on_branch(checked)
        if on != spot.branch:
            raise GitError(
                f"{checked.path} has '{on or 'a detached HEAD'}' checked out, not the run's branch "
                f"'{spot.branch}'; refusing to commit there",
                fix=f"check out '{spot.branch}' there again (`git checkout {spot.branch}`) and rerun",
            )

    def _outside(self, wt: Path) -> tuple[str, ...]:
        """Pathspecs limiting a command to what the run may change in `wt` (all of a linked
        worktree; everything but the live record in an adopted checkout)."""
        spot = self._in_place.get(wt)
        return spot.outside if spot is not None else ()

    def _reset_in_place(self, checked: _Checked, branch: str, sha: str) -> None:
        """`reset_to` in an adopted checkout: HEAD back on `branch` at `sha`, everything but
        the live record restored and cleaned; ignored files are kept."""
        wt = checked.path
        if self._on_branch(checked) != branch:
            self._ok("symbolic-ref", "HEAD", f"refs/heads/{branch}", cwd=wt)
        res = self._run("reset", "--quiet", "--mixed", sha, cwd=wt)
        if not res.ok:
            self._require_commit(sha, "commit")  # the clearer error if it does not exist
            raise GitError(
                f"git reset failed in {wt}: {_failure(res)}",
                fix="fix what git reports in the repository, then retry",
            )
        self._restore_outside(wt, sha)

    def _restore_outside(self, wt: Path, sha: str) -> None:
        """Everything but the live record back to `sha`; what an agent or a CI step left,
        ignored or not, removed (a stale `__pycache__` would otherwise outlive its source),
        except the ignored entries the checkout had when it was adopted."""
        spot = self._in_place[wt]
        # --staged too: index entries written with the files, so `apply --index` finds them current.
        self._ok("restore", f"--source={sha}", "--staged", "--worktree", "--", *spot.outside, cwd=wt)
        self._ok("clean", "-ffdxq", *spot.clean_exceptions, "--", *spot.outside, cwd=wt)

    def _worktree(self, worktree: Path, *, ours: bool) -> _Checked:
        """`worktree` verified as the top of a worktree of this repository.

        With `ours`, it must also be a linked worktree, never the user's checkout.

        A linked worktree is verified with git once per instance; later calls only check
        that its `.git` file still holds the same pointer and that the git directory it
        points at still exists. A deleted or rewritten `.git` file means a full check
        again, which refuses whatever git would otherwise walk up to.
        """
        wt = Path(worktree)
        cached = self._checked.get(wt)
        if cached is not None:
            if cached.dotgit == _read_dotgit(wt) and cached.git_dir.is_dir():
                return self._allowed(cached, wt, ours)
            del self._checked[wt]
        checked = self._verify_worktree(wt)
        if checked.dotgit is not None and not checked.main:
            self._checked[wt] = checked
        return self._allowed(checked, wt, ours)

    def _allowed(self, checked: _Checked, wt: Path, ours: bool) -> _Checked:
        if ours and checked.main and checked.path not in self._in_place:
            raise GitError(
                f"{wt} is the user's checkout of {self.repo}; the supervisor only changes its own linked worktrees",
                fix="pass the run's worktree (default .autopack/worktrees/<run_id>)",
            )
        return checked

    def _verify_worktree(self, wt: Path) -> _Checked:
        if not wt.is_dir():
            raise GitError(
                f"worktree {wt} does not exist",
                fix="re-create it (doit start_run / run_phase call ensure_worktree)",
            )
        dotgit = _read_dotgit(wt)  # read before git: a change after it makes the cache miss
        res = self._run("rev-parse", "--show-toplevel", "--absolute-git-dir", "--git-common-dir", cwd=wt)
        if not res.ok:
            raise GitError(
                f"{wt} is not a git worktree ({_failure(res)})",
                fix=f"remove the directory and let ensure_worktree re-create it "
                f"(`git -C {self.repo} worktree prune` drops its registration)",
            )
        top, git_dir, common = res.stdout.splitlines()[:3]
        path, git_path = wt.resolve(), Path(git_dir).resolve()
        if Path(top).resolve() != path:
            raise GitError(
                f"{wt} is not the top of a git worktree: it lies inside {top}",
                fix="its .git file is missing; remove the directory and let ensure_worktree re-create it",
            )
        if (wt / common).resolve() != self._common_dir():
            raise GitError(
                f"worktree {wt} belongs to another repository, not to {self.repo}",
                fix="pass a worktree created for this repository by ensure_worktree",
            )
        main = git_path == self._common_dir() or path == self.toplevel()
        return _Checked(path, git_path, main, dotgit)

    def head(self, worktree: Path) -> str:
        return self._head(self._worktree(worktree, ours=False))

    def _head(self, checked: _Checked) -> str:
        """The commit HEAD is at: read from git's files when HEAD is a branch whose ref is
        a plain loose ref (what every commit, checkout and reset here leaves), else asked."""
        sha = _loose_head(checked.git_dir, self._common_dir())
        if sha is not None:
            return sha
        return self._ok("rev-parse", "--verify", "HEAD^{commit}", cwd=checked.path).strip()

    def _status(self, wt: Path, untracked: bool = True) -> list[str]:
        mode = "--untracked-files=normal" if untracked else "--untracked-files=no"
        out = self._ok("status", "--porcelain", mode, "--", *self._outside(wt), cwd=wt)
        return [line for line in out.splitlines() if line.strip()]

    def is_dirty(self, worktree: Path) -> bool:
        """Tracked changes or untracked files that are not ignored."""
        return bool(self._status(self._worktree(worktree, ours=False).path))

    def assert_clean(self, worktree: Path) -> None:
        wt = self._worktree(worktree, ours=False).path
        lines = self._status(wt)
        if not lines:
            return
        shown = ", ".join(line.strip() for line in lines[:_STATUS_LINES_SHOWN])
        if len(lines) > _STATUS_LINES_SHOWN:
            shown += f" (and {len(lines) - _STATUS_LINES_SHOWN} more)"
        raise GitError(
            f"worktree {wt} was changed behind the supervisor's back: {shown}",
            fix="stop whatever else writes there; the worktree belongs to the run (the next "
            f"step resets it), or remove it with `git worktree remove --force {wt}`",
        )

    # -- patches -----------------------------------------------------------------------

    def collect_patch(self, worktree: Path, base_commit: str) -> str:
        """Everything the worktree holds beyond `base_commit`, as one binary-safe diff.

        Uncommitted edits, new files (not ignored ones) and commits the agent made itself are
        all folded in. A text file that is not UTF-8 comes out as a git binary patch, so the
        text is always valid UTF-8 and applies byte for byte. Only if the repository's own
        .gitattributes force a text diff for such a file do its bytes travel as surrogate
        escapes (`encode_patch` turns them back).
        """
        wt = self._worktree(worktree, ours=True).path
        base = self._sha_or_resolve(base_commit, "base commit")
        self._dirty.add(wt)
        self._ok("add", "--all", cwd=wt)
        try:
            raw = self._diff_bytes(wt, f"{base}^{{commit}}", self._outside(wt))
        except GitError:
            self._require_commit(base, "base commit")
            raise
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raw = self._with_binary_sections(wt, f"{base}^{{commit}}", raw)
        return raw.decode("utf-8", errors="surrogateescape")

    def _diff_bytes(self, wt: Path, base: str, pathspecs: Sequence[str] = (), all_binary: bool = False) -> bytes:
        """The staged diff against `base` as raw bytes (the pipe wrapper decodes lossily)."""
        with tempfile.TemporaryDirectory(prefix="autopack-diff-") as tmp:
            out = Path(tmp) / "patch.diff"
            config: tuple[str, ...] = ()
            if all_binary:
                # Global attributes rank below the repository's own .gitattributes.
                attributes = Path(tmp) / "attributes"
                attributes.write_text("* -diff\n")
                config = ("-c", f"core.attributesFile={attributes}")
            self._ok(
                *config,
                "diff",
                "--cached",
                "--binary",
                "--full-index",
                "--no-color",
                "--no-ext-diff",
                "--no-renames",
                "--no-textconv",
                "--submodule=short",
                "--unified=3",
                "--src-prefix=a/",
                "--dst-prefix=b/",
                f"--output={out}",
                base,
                "--",
                *pathspecs,
                cwd=wt,
            )
            return out.read_bytes()

    def _with_binary_sections(self, wt: Path, base: str, raw: bytes) -> bytes:
        """`raw` with every file section that is not UTF-8 re-diffed as a binary patch."""
        sections = _diff_sections(raw)
        bad = {_section_path(sec) for sec in sections if not _is_utf8(sec)}
        specs = [":(literal)" + path.decode("utf-8", "surrogateescape") for path in sorted(bad)]
        replacement: dict[bytes, list[bytes]] = {}
        for sec in _diff_sections(self._diff_bytes(wt, base, specs, all_binary=True)):
            replacement.setdefault(_section_path(sec), []).append(sec)
        out: list[bytes] = []
        for sec in sections:
            path = _section_path(sec)
            if path not in replacement:
                out.append(sec)
            elif replacement[path]:
                # One path can have two sections (a type change); all were re-diffed.
                out.extend(replacement[path])
                replacement[path] = []
        return b"".join(out)

    def reset_to(self, worktree: Path, branch: str, commit: str) -> None:
        """Put the worktree exactly at `commit` on `branch`, whatever the agent did there.

        One `git status` when the worktree may already be there (then nothing else is
        done); otherwise a forced checkout, `git clean -ffdx` and a check that HEAD took.
        In an adopted checkout (`adopt_checkout`) only onto its branch; the live record and
        the ignored entries it had when adopted stay (`_reset_in_place`).
        """
        checked = self._worktree(worktree, ours=True)
        self._check_ref_name(branch, "branch")
        wt = checked.path
        spot = self._in_place.get(wt)
        if spot is not None and branch != spot.branch:
            raise GitError(
                f"refusing to reset {wt} onto '{branch}': the run works in place there on '{spot.branch}' only",
                fix="pass the run's branch",
            )
        sha = self._sha_or_resolve(commit, "commit")
        # An agent killed mid-command leaves this lock behind; the worktree is ours alone.
        (checked.git_dir / "index.lock").unlink(missing_ok=True)
        if wt not in self._dirty and self._is_clean_at(wt, branch, sha):
            return
        if spot is not None:
            self._reset_in_place(checked, branch, sha)
        else:
            res = self._run("checkout", "--force", "--quiet", "-B", branch, sha, "--", cwd=wt)
            if not res.ok:
                self._require_commit(sha, "commit")  # the clearer error if it does not exist
                raise GitError(
                    f"git checkout failed in {wt}: {_failure(res)}",
                    fix="fix what git reports in the repository, then retry",
                )
            self._ok("clean", "-ffdxq", cwd=wt)
        self._dirty.discard(wt)
        if _loose_head(checked.git_dir, self._common_dir(), branch) != sha and (
            self._ok("rev-parse", "--verify", "HEAD^{commit}", cwd=wt).strip() != sha
        ):
            raise GitError(
                f"resetting {wt} to {sha[:12]} on '{branch}' did not take",
                fix=f"remove the worktree (`git worktree remove --force {wt}`) and let ensure_worktree re-create it",
            )

    def _is_clean_at(self, wt: Path, branch: str, sha: str) -> bool:
        """HEAD is `branch` at `sha` and nothing is modified, staged, untracked or ignored
        (in an adopted checkout: outside the live record; the ignored entries it kept allowed)."""
        spot = self._in_place.get(wt)
        status = self._branch_status(wt, "normal", *(spot.outside if spot else ()))
        if status is None:
            return False
        head, oid, records = status
        for record in records:
            if spot is not None and record.startswith("! ") and record[2:] in spot.kept:
                continue
            return False
        return oid == sha and head == branch

    def _branch_status(
        self, wt: Path, untracked: str, *pathspec: str
    ) -> tuple[str | None, str | None, list[str]] | None:
        """One `git status --porcelain=v2 --branch` of `wt` (ignored entries included):
        (branch.head, branch.oid, every other non-empty record), None if git failed."""
        res = self._run(
            "status",
            "--porcelain=v2",
            "--branch",
            f"--untracked-files={untracked}",
            "--ignored=traditional",
            "--ignore-submodules=dirty",
            "-z",
            "--",
            *pathspec,
            cwd=wt,
        )
        if not res.ok:
            return None
        head = oid = None
        records = []
        for record in res.stdout.split("\0"):
            if record.startswith("# branch.oid "):
                oid = record.removeprefix("# branch.oid ")
            elif record.startswith("# branch.head "):
                head = record.removeprefix("# branch.head ")
            elif record and not record.startswith("# "):
                records.append(record)
        return head, oid, records

    def apply(self, worktree: Path, patch_path: Path) -> ApplyResult:
        """Apply a patch to the working tree and index; 3-way merge if it does not apply.

        On failure the worktree is left clean at its HEAD.
        """
        wt = self._worktree(worktree, ours=True).path
        patch = Path(patch_path).resolve()
        if not patch.is_file():
            raise GitError(
                f"patch file {patch} does not exist",
                fix="check the attempt directory; the patch is written before it is applied",
            )
        if not patch.read_bytes().strip():
            return ApplyResult(ok=False, three_way=False, message="empty patch")
        common = ("apply", "--whitespace=nowarn")
        # Without --reject, git apply changes nothing unless every hunk applies, so no
        # separate --check run is needed before it.
        self._dirty.add(wt)
        done = self._run(*common, "--index", str(patch), cwd=wt)
        if done.ok:
            return ApplyResult(ok=True, three_way=False, message="applied")
        merged = self._run(*common, "--3way", str(patch), cwd=wt)
        if merged.ok:
            return ApplyResult(ok=True, three_way=True, message="applied with a 3-way merge")
        self._discard_changes(wt)
        message = f"{_failure(done)}; 3-way merge: {_failure(merged)}"
        return ApplyResult(ok=False, three_way=True, message=message)

    def reapply(self, worktree: Path, branch: str, commit: str, patch_path: Path) -> ApplyResult:
        """The worktree at `commit` on `branch` with the patch applied to it and its index,
        exactly as `reset_to` + `apply` leave it (the snapshot of a verified patch).

        One `git status` when the worktree already holds exactly that patch (the gate
        applied it, CI ran on it): HEAD is `branch` at `commit`, and every path git reports
        as changed is staged with the mode and blob the patch's `--full-index` lines name
        and unchanged in the working tree; only untracked and ignored leftovers (CI's build
        products) are then removed, with one `git clean`. Anything else, and an adopted
        checkout, takes `reset_to` + `apply`. git's own answer decides, never a cache: what
        CI changed, staged or left behind is seen by this one status.
        """
        checked = self._worktree(worktree, ours=True)
        self._check_ref_name(branch, "branch")
        wt = checked.path
        patch = Path(patch_path)
        expected = None
        if wt not in self._in_place and _is_full_sha(commit) and patch.is_file():
            expected = _post_images(patch.read_bytes())
        leftovers = self._holds(wt, branch, commit, expected) if expected else None
        if leftovers is None:
            self.reset_to(worktree, branch, commit)
            return self.apply(worktree, patch_path)
        self._dirty.add(wt)
        # A CI step killed mid-command leaves this lock (as `reset_to` knows); the worktree is ours alone.
        (checked.git_dir / "index.lock").unlink(missing_ok=True)
        if leftovers:
            self._ok("clean", "-ffdxq", cwd=wt)
        return ApplyResult(ok=True, three_way=False, message="applied")

    def _holds(self, wt: Path, branch: str, sha: str, expected: Mapping[str, tuple[str, str]]) -> bool | None:
        """Whether HEAD is `branch` at `sha` and the index and working tree differ from it
        by exactly `expected` (path -> (mode, blob) staged and in the working tree): None
        if not, else whether untracked or ignored files lie around as well."""
        status = self._branch_status(wt, "all")
        if status is None:
            return None
        head, oid, records = status
        if head != branch or oid != sha or any("\ufffd" in r for r in records):  # a path not UTF-8: compare nothing
            return None
        left = dict(expected)
        leftovers = False
        for record in records:
            if record.startswith(("? ", "! ")):
                leftovers = True
            elif record.startswith("1 "):
                # 1 XY sub mH mI mW hH hI path: staged (X), the working tree as staged (Y is .)
                fields = record.split(" ", 8)
                if len(fields) != 9 or fields[1][1] != "." or fields[2] != "N...":
                    return None
                if left.pop(fields[8], None) != (fields[4], fields[7]):
                    return None
            else:
                return None  # a conflict, a rename: not the plain applied patch
        return None if left else leftovers

    def _discard_changes(self, wt: Path) -> None:
        if wt in self._in_place:
            self._ok("reset", "--quiet", "--mixed", "HEAD", cwd=wt)
            self._restore_outside(wt, "HEAD")
            return
        self._ok("reset", "--hard", "--quiet", "HEAD", cwd=wt)
        self._ok("clean", "-ffdq", cwd=wt)

    # -- history -----------------------------------------------------------------------

    def commit(
        self,
        worktree: Path,
        message: str,
        trailers: dict[str, str],
        allow_empty: bool = False,
    ) -> str:
        """Commit everything in the worktree with `trailers` as the message's trailer block."""
        checked = self._worktree(worktree, ours=True)
        self._require_in_place_branch(checked)
        wt = checked.path
        text = _message_with_trailers(message, trailers, where=str(wt))
        self._ok("add", "--all", cwd=wt)
        args = ["commit", "--quiet", "--no-verify", "--cleanup=whitespace", "-F", "-"]
        if allow_empty:
            args.append("--allow-empty")
        res = self._run(*args, cwd=wt, input_text=text)
        if not res.ok:
            # Without --allow-empty git refuses a commit that changes nothing: say so.
            unchanged = self._run("diff", "--cached", "--quiet", "HEAD", "--", cwd=wt).ok
            if unchanged and not allow_empty:
                raise GitError(
                    f"nothing to commit in worktree {wt}",
                    fix="the applied patch changed nothing; pass allow_empty for a record-only commit",
                )
            raise GitError(
                f"git commit failed in {wt}: {_failure(res)}",
                fix="fix what git reports in the repository, then retry",
            )
        self._dirty.discard(wt)
        return self._head(checked)

    def commit_changes(self, worktree: Path, message: str, trailers: dict[str, str]) -> bool:
        """Commit everything in the worktree if anything changed; False if nothing had.

        Two git calls (`add`, `commit`) where `is_dirty` + `commit` take four.
        """
        checked = self._worktree(worktree, ours=True)
        self._require_in_place_branch(checked)
        wt = checked.path
        text = _message_with_trailers(message, trailers, where=str(wt))
        self._ok("add", "--all", cwd=wt)
        res = self._run("commit", "--quiet", "--no-verify", "--cleanup=whitespace", "-F", "-", cwd=wt, input_text=text)
        if res.ok:
            self._dirty.discard(wt)
            return True
        if self._run("diff", "--cached", "--quiet", "HEAD", "--", cwd=wt).ok:
            return False
        raise GitError(
            f"git commit failed in {wt}: {_failure(res)}",
            fix="fix what git reports in the repository, then retry",
        )

    def tag(self, worktree: Path, name: str, commit: str, message: str) -> None:
        """An annotated tag `name` on `commit`; a no-op if it already points there."""
        wt = self._worktree(worktree, ours=False).path
        self._check_ref_name(name, "tag")
        text = message.strip() + "\n" if message.strip() else f"{name}\n"
        if _is_full_sha(commit):
            # The common case in one call: a new tag on a known commit. Anything else
            # (the tag exists, the commit does not) is sorted out below.
            created = self._run(
                "tag",
                "--annotate",
                "--cleanup=whitespace",
                "-F",
                "-",
                name,
                f"{commit}^{{commit}}",
                cwd=wt,
                input_text=text,
            )
            if created.ok:
                return
        sha = self._require_commit(commit, "commit")
        existing = self.tag_target(name)
        if existing == sha:
            return
        if existing is not None:
            raise GitError(
                f"tag '{name}' already points at {existing[:12]}, not {sha[:12]}, in {self.repo}",
                fix=f"tags of accepted phases are never moved; if '{name}' is stale, delete it "
                f"(`git tag -d {name}`) and retry",
            )
        self._ok(
            "tag",
            "--annotate",
            "--cleanup=whitespace",
            "-F",
            "-",
            name,
            sha,
            cwd=wt,
            input_text=text,
        )

    def tag_target(self, name: str) -> str | None:
        """The commit tag `name` points at (through an annotated tag), or None."""
        if not _safe_ref_arg(name):
            return None
        return self.resolve(f"refs/tags/{name}")

    def _trailer_log(self, rev_range: str, key: str, grep: str = "") -> Iterator[tuple[str, list[str]]]:
        """(sha, values of trailer `key`) for each commit in `rev_range`, newest first."""
        if not _TRAILER_KEY.match(key):
            raise GitError(
                f"'{key}' is not a valid trailer key",
                fix="use letters, digits and '-' (e.g. Autopack-Run)",
            )
        args = [
            "log",
            "-z",
            "--topo-order",
            f"--format=%H%x01%(trailers:key={key},valueonly,unfold)",
        ]
        if grep:
            args += ["--fixed-strings", f"--grep={grep}"]
        out = self._ok(*args, rev_range, "--")
        for record in out.split("\0"):
            sha, _, values = record.strip("\n").partition("\x01")
            if sha:
                yield sha, [v.strip() for v in values.splitlines() if v.strip()]

    def find_commit_with_trailer(self, branch: str, key: str, value: str, since: str | None = None) -> str | None:
        """The newest commit on `branch` (after `since`) whose trailer `key` is `value`."""
        wanted = value.strip()
        if _plain_ref(branch) and (since is None or _plain_ref(since)):
            # One `git log` when both exist; if it fails, the checks below name the culprit.
            rev_range = branch if since is None else f"{since}..{branch}"
            try:
                found = list(self._trailer_log(rev_range, key, grep=wanted))
            except GitError:
                pass
            else:
                return next((sha for sha, values in found if wanted in values), None)
        tip = self._require_commit(branch, "branch")
        rev_range = tip
        if since is not None:
            rev_range = f"{self._require_commit(since, 'commit')}..{tip}"
        for sha, values in self._trailer_log(rev_range, key, grep=wanted):
            if wanted in values:
                return sha
        return None

    def integration_status(self, worktree: Path, base: str, branch: str) -> IntegrationStatus:
        """Ahead/behind of `branch` against `base`, its tip, newest snapshot, dirtiness."""
        wt = self._worktree(worktree, ours=False).path
        base_sha = self._require_commit(base, "base branch")
        tip = self._require_commit(branch, "branch")
        counts = self._ok("rev-list", "--left-right", "--count", f"{base_sha}...{tip}").split()
        behind, ahead = int(counts[0]), int(counts[1])
        snapshot = next(
            (sha for sha, values in self._trailer_log(f"{base_sha}..{tip}", SNAPSHOT_TRAILER) if values),
            None,
        )
        return IntegrationStatus(
            ahead=ahead,
            behind=behind,
            head=tip,
            last_snapshot=snapshot,
            dirty=bool(self._status(wt)),
        )

    def merge_no_ff(self, into: str, branch: str, message: str, worktree: Path) -> str:
        """Merge `branch` into `into` (checked out in `worktree`) as a merge commit; its sha.

        The one operation allowed in the user's checkout: promote writes the base branch,
        which may be checked out nowhere else. Refuses if tracked files there are modified.
        """
        wt = self._worktree(worktree, ours=False).path
        on = self._run("symbolic-ref", "--quiet", "--short", "HEAD", cwd=wt).stdout.strip()
        if on != into:
            raise GitError(
                f"{wt} has '{on or 'a detached HEAD'}' checked out, not '{into}'",
                fix=f"check out '{into}' there, or pass the worktree that has it",
            )
        if not self.branch_exists(branch):
            raise GitError(
                f"branch '{branch}' does not exist in {self.repo}",
                fix="check the run's branch name in run.json (`git branch --list` shows them)",
            )
        if self._status(wt, untracked=False):
            raise GitError(
                f"cannot merge '{branch}' into '{into}': {wt} has uncommitted changes",
                fix="commit or stash them first, then retry",
            )
        res = self._run(
            "merge",
            "--no-ff",
            "--no-log",
            "--no-edit",
            "--quiet",
            "-m",
            message,
            f"refs/heads/{branch}",
            cwd=wt,
        )
        if not res.ok:
            self._run("merge", "--abort", cwd=wt)
            raise GitError(
                f"merging '{branch}' into '{into}' in {wt} failed: {_failure(res)}",
                fix=f"the branches conflict; merge by hand (`git merge --no-ff {branch}`) or "
                "rebase the run onto the new base",
            )
        return self.head(wt)

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """True when `ancestor` is reachable from `descendant` (promote: already merged?)."""
        older = self._require_commit(ancestor, "commit")
        newer = self._require_commit(descendant, "commit")
        res = self._run("merge-base", "--is-ancestor", older, newer)
        if res.returncode in (0, 1):
            return res.returncode == 0
        raise GitError(
            f"git merge-base --is-ancestor failed in {self.repo}: {_failure(res)}",
            fix="fix what git reports in the repository, then retry",
        )

    def checked_out_in(self, branch: str) -> Path | None:
        """The worktree (the user's checkout or a linked one) that has `branch` checked out."""
        return next((e.path for e in self.worktrees() if e.branch == branch), None)

    def last_commit(self) -> tuple[str, str] | None:
        """(sha, committer date in ISO 8601) of HEAD, or None in a repository without
        commits. Read-only: `catalog_scan` uses it to judge a candidate's activity."""
        self.toplevel()
        res = self._run("log", "-1", "--format=%H%x00%cI", "HEAD")
        if not res.ok or "\x00" not in res.stdout:
            return None
        sha, _, when = res.stdout.strip().partition("\x00")
        return sha, when

    def tracked_symlinks(self, worktree: Path) -> list[str]:
        """Paths of the symlinks committed at the worktree's HEAD (mode 120000)."""
        checked = self._worktree(worktree, ours=True)
        # The index file git itself would read for `ls-files`: safe for this security
        # check because what is read is git's own record (rewritten by git at every reset,
        # replaced only by an atomic rename), and every byte of it is verified (its checksum,
        # a version and extensions this reader knows); anything else asks git.
        found = _index_symlinks(checked.git_dir / "index")
        if found is not None:
            return found
        out = self._ok("ls-files", "-s", "-z", cwd=checked.path)
        return sorted(
            entry.partition("\t")[2] for entry in out.split("\0") if entry.startswith("120000 ")
        )

    def untracked_files(self, worktree: Path, under: str) -> list[str]:
        """Untracked, not ignored files below the directory `under` (relative to the
        worktree), as worktree-relative paths. Reads only: the index is not touched."""
        wt = self._worktree(worktree, ours=False).path
        out = self._ok("ls-files", "--others", "--exclude-standard", "-z", "--", f":(literal){under}", cwd=wt)
        return sorted(p for p in out.split("\0") if p)

    def changed_paths(self, worktree: Path) -> list[str]:
        """Every path the worktree or its index changes against HEAD, and every untracked
        file that is not ignored: the paths `collect_patch` against HEAD would show, from
        one `git status` that writes nothing (not even the index)."""
        wt = self._worktree(worktree, ours=False).path
        out = self._ok(
            "status",
            "--porcelain=v2",
            "-z",
            "--no-renames",
            "--untracked-files=all",
            "--ignore-submodules=dirty",
            "--",
            *self._outside(wt),
            cwd=wt,
        )
        paths = set()
        for record in out.split("\0"):
            kind = record[:2]
            if kind == "1 ":
                paths.add(record.split(" ", 8)[8])
            elif kind == "u ":
                paths.add(record.split(" ", 10)[10])
            elif kind == "? ":
                paths.add(record[2:])
            elif record:
                raise GitError(
                    f"git status printed a record it cannot have written in {wt}: {record[:200]!r}",
                    "a bug in Autopack or git: report it with `git --version`",
                )
        return sorted(paths)

    # -- what an agent may leave behind in the shared ref store ---------------------------

    def refs_state(self) -> RefsState:
        """Branches, tags and the stash (with its reflog, which is the stash list), so what
        an agent does to them in its linked worktree can be undone: they are shared with
        the user's repository."""
        refs = _refs_from_files(self._common_dir())
        if refs is None:  # not a plain files backend: git says
            out = self._ok("for-each-ref", "--format=%(objectname) %(refname)", "refs/heads", "refs/tags", "refs/stash")
            refs = {name: sha for sha, _, name in (line.partition(" ") for line in out.splitlines() if line)}
        log = self._common_dir() / "logs" / "refs" / "stash"
        return RefsState(refs, log.read_bytes() if log.exists() else None)

    def restore_refs(self, before: RefsState, keep: Collection[str], quarantine: str) -> list[str]:
        """Put branches, tags and the stash back as `before` (except the refs in `keep`).

        Nothing is destroyed: a ref the agent created or moved is first saved under
        `quarantine` (e.g. refs/autopack/quarantine/<run>/<attempt>/...). Returns what changed."""
        after = self.refs_state()
        changes = []
        for name in sorted(set(before.refs) | set(after.refs)):
            old, new = before.refs.get(name), after.refs.get(name)
            if name in keep or old == new:
                continue
            if new is not None:
                self._ok("update-ref", f"{quarantine}/{name.removeprefix('refs/')}", new)
            if old is None:
                self._ok("update-ref", "-d", "--no-deref", name)
                changes.append(f"removed {name} (kept as {quarantine}/{name.removeprefix('refs/')})")
            else:
                self._ok("update-ref", "--no-deref", name, old)
                changes.append(f"restored {name} to {old[:12]}")
        log = self._common_dir() / "logs" / "refs" / "stash"
        current = log.read_bytes() if log.exists() else None
        if current != before.stash_log:
            if before.stash_log is None:
                log.unlink(missing_ok=True)
            else:
                log.write_bytes(before.stash_log)
            changes.append("restored the stash list")
        return changes

    def branch_commits(self, branch: str, since: str) -> list[str] | None:
        """The commits on `branch` that are not on commit `since`, newest first; None when the
        repository has no such branch, local or remote-tracking (a CI clone may only have
        `refs/remotes/<remote>/<branch>`).

        One `git rev-list` when the local branch and `since` exist (validate's check that
        every accepted phase is on the run's branch); where `since` is not in the repository,
        every commit of the branch."""
        self._check_ref_name(branch, "branch")
        if not _is_full_sha(since):
            raise GitError(f"'{since}' is not a full commit sha (in {self.repo})", fix="name the commit by its sha")
        res = self._run("rev-list", f"refs/heads/{branch}", f"^{since}", "--")
        if res.ok:
            return res.stdout.split()
        ref = self._branch_ref(branch)
        if ref is None:
            return None
        res = self._run("rev-list", ref, f"^{since}", "--")
        return res.stdout.split() if res.ok else self._ok("rev-list", ref, "--").split()

    def _branch_ref(self, branch: str) -> str | None:
        """`refs/heads/<branch>`, else `refs/remotes/<remote>/<branch>` (origin first), else None."""
        local = f"refs/heads/{branch}"
        names = self._ok("for-each-ref", "--format=%(refname)", local, "refs/remotes").split()
        if local in names:
            return local
        remote = [n for n in names if n.removeprefix("refs/remotes/").partition("/")[2] == branch]
        return min(remote, key=lambda n: (not n.startswith("refs/remotes/origin/"), n), default=None)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _diff_sections(raw: bytes) -> list[bytes]:
    """A diff split into its per-file sections (each starts with `diff --git `)."""
    starts = [0] + [m.start() + 1 for m in re.finditer(rb"\ndiff --git ", raw)]
    return [raw[a:b] for a, b in zip(starts, [*starts[1:], len(raw)], strict=True) if raw[a:b]]


def _section_path(section: bytes) -> bytes:
    """The path in a `diff --git a/P b/P` header (no renames, so both sides are P)."""
    rest = section.split(b"\n", 1)[0][len(b"diff --git ") :]
    if not rest.startswith(b'"'):
        return rest[2 : (len(rest) - 1) // 2]
    taken = take_quoted(rest)  # core.quotePath: C-style quoting
    if taken is None:
        raise GitError(
            f"git printed a diff header it cannot have written: {rest[:200]!r}",
            "a bug in Autopack or git: report it with `git --version` and the file name",
        )
    return taken[0][2:]


_NULL_MODE = "000000"


def _post_images(raw: bytes) -> dict[str, tuple[str, str]] | None:
    """path -> (mode, blob) after a `git diff --full-index` patch (a deleted path: mode
    000000 and a blob of zeros, as `git status` shows it staged); None for anything
    it cannot name exactly (a short index line, a rename, a path twice, a text that is
    not a git diff, a path that is not UTF-8): the caller then applies the patch."""
    out: dict[str, tuple[str, str]] = {}
    for section in _diff_sections(raw):
        if not section.startswith(b"diff --git "):
            return None
        try:
            path = _section_path(section).decode("utf-8")
            header = section.split(b"\n---", 1)[0].split(b"\n@@", 1)[0].decode("ascii")
        except (GitError, UnicodeDecodeError):
            return None
        image = _header_image(header.split("\n")[1:])
        if image is None or path in out or "\ufffd" in path:
            return None
        out[path] = image
    return out or None


def _header_image(lines: list[str]) -> tuple[str, str] | None:
    """(mode, blob) a git diff section's extended header names for the new side."""
    mode = blob = None
    deleted = False
    for line in lines:
        key, _, value = line.partition(" ")
        if not line:
            continue  # the end of a section without hunks (an empty file added or deleted)
        if line.startswith(("new file mode ", "new mode ")):
            mode = line.rsplit(" ", 1)[1]
        elif line.startswith("deleted file mode "):
            deleted = True
        elif key == "index":
            span, _, index_mode = value.partition(" ")
            blob = span.partition("..")[2]
            mode = mode or index_mode or None
        elif line.startswith(("GIT binary patch", "Binary files ")):
            break
        elif not line.startswith("old mode "):
            return None  # a rename, a copy, a similarity: not what collect_patch writes
    if blob is None or not _is_full_sha(blob):
        return None
    if deleted:
        return (_NULL_MODE, blob) if set(blob) == {"0"} else None
    return (mode, blob) if mode is not None and re.fullmatch(r"[0-7]{6}", mode) else None


_SYMLINK_TYPE = 0o120000


# Above this many entries one `git ls-files` costs less than walking them in Python.
_INDEX_ENTRIES_READ = 2000


def _index_symlinks(path: Path) -> list[str] | None:
    """The paths of the symlinks in the git index at `path` (every stage, sorted, as
    `git ls-files -s` lists them); None where git should be asked: no index, a checksum
    that does not match (or none: index.skipHash), a version other than 2-4, a split or
    sparse index, a large one, or any entry that does not parse exactly."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    for algo, size in (("sha1", 20), ("sha256", 32)):
        if len(data) >= 12 + size and hashlib.new(algo, data[:-size]).digest() == data[-size:]:
            found = _index_entries(data[:-size], size)
            return None if found is None else sorted(found)
    return None


def _index_entries(data: bytes, hash_size: int) -> list[str] | None:
    """The symlink paths of index `data` (without its checksum); None as `_index_symlinks`."""
    if data[:4] != b"DIRC":
        return None
    version, count = struct.unpack_from(">II", data, 4)
    if version not in (2, 3, 4) or count > _INDEX_ENTRIES_READ:
        return None
    pos, name, found = 12, b"", []
    fixed = 40 + hash_size + 2  # stat data, object name, flags
    for _ in range(count):
        if pos + fixed > len(data):
            return None
        (mode,) = struct.unpack_from(">I", data, pos + 24)
        (flags,) = struct.unpack_from(">H", data, pos + fixed - 2)
        extended = bool(flags & 0x4000)
        if extended and version < 3:
            return None
        parsed = _index_name(data, pos + fixed + 2 * extended, name, version)
        if parsed is None or (flags & 0xFFF < 0xFFF and flags & 0xFFF != len(parsed[0])):
            return None
        name, end = parsed
        if version < 4:  # NUL padding to a multiple of 8 bytes
            end = pos + ((fixed + 2 * extended + len(name) + 8) & ~7)
            if end > len(data) or data[pos + fixed + 2 * extended + len(name) : end].strip(b"\0"):
                return None
        if mode & 0o170000 == _SYMLINK_TYPE:
            try:
                found.append(name.decode("utf-8"))
            except UnicodeDecodeError:
                return None  # how git's output would show it is git's to say
        pos = end
    return found if _plain_extensions(data, pos) else None


def _index_name(data: bytes, start: int, previous: bytes, version: int) -> tuple[bytes, int] | None:
    """(the entry's path, the position after its NUL) at `start`; version 4 first strips
    the previous name's tail (a varint says how many bytes)."""
    prefix = b""
    if version == 4:
        strip, start = _varint(data, start)
        if strip < 0 or strip > len(previous):
            return None
        prefix = previous[: len(previous) - strip]
    end = data.find(b"\0", start)
    if end < 0:
        return None
    return prefix + data[start:end], end + 1


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """git's offset varint (index v4) at `pos`: (value, the position after it); -1 if cut."""
    value = -1
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value = byte & 0x7F if value < 0 else ((value + 1) << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, pos
    return -1, pos


def _plain_extensions(data: bytes, pos: int) -> bool:
    """The extensions after the entries span the rest exactly and all are optional ones
    (a capital first letter: a cache git may ignore); a required one changes which entries
    there are (`link`: a split index, `sdir`: a sparse one) or is one git would refuse."""
    while pos + 8 <= len(data):
        (size,) = struct.unpack_from(">I", data, pos + 4)
        if not 0x41 <= data[pos] <= 0x5A:
            return False
        pos += 8 + size
    return pos == len(data)


def _porcelain_fields(block: str) -> dict[str, str]:
    """`key value` lines (a bare `key` maps to "") of one porcelain record."""
    fields: dict[str, str] = {}
    for line in block.splitlines():
        key, _, value = line.partition(" ")
        if key:
            fields[key] = value
    return fields


def _loose_head(git_dir: Path, common_dir: Path, branch: str | None = None) -> str | None:
    """The sha HEAD names when HEAD is `ref: refs/heads/<b>` (b == `branch` if given) and
    that branch is a loose ref holding a full sha; None for anything else (a detached or
    unborn HEAD, a packed ref, the reftable backend), which the caller asks git about."""
    try:
        head = (git_dir / "HEAD").read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    if not head.startswith("ref: refs/heads/") or not head.endswith("\n"):
        return None
    ref = head[len("ref: ") : -1]
    if not valid_ref_name(ref) or (branch is not None and ref != f"refs/heads/{branch}"):
        return None
    try:
        sha = (common_dir / ref).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    return sha[:-1] if sha.endswith("\n") and _is_full_sha(sha[:-1]) else None


_SHARED_REFS = ("refs/heads", "refs/tags")


def _refs_from_files(common_dir: Path) -> dict[str, str] | None:
    """Branches, tags and `refs/stash` (name -> the sha `for-each-ref` shows) read from
    git's files backend: loose refs over `packed-refs`, `*.lock` files skipped as git
    skips them. None for anything git would read differently (the reftable backend, a
    symbolic or broken ref, a symlink, a name git would not take): ask git then."""
    if (common_dir / "reftable").exists():
        return None
    refs: dict[str, str] = {}
    try:
        packed = (common_dir / "packed-refs").read_bytes().decode("ascii")
    except FileNotFoundError:
        packed = ""
    except (OSError, UnicodeDecodeError):
        return None
    for line in packed.splitlines():
        if not line or line[0] in "#^":
            continue
        sha, _, name = line.partition(" ")
        if not _is_full_sha(sha) or not valid_ref_name(name):
            return None
        if name == "refs/stash" or name.startswith(tuple(root + "/" for root in _SHARED_REFS)):
            refs[name] = sha
    try:
        loose = [name for root in _SHARED_REFS for name in _loose_ref_names(common_dir, root)]
        if (common_dir / "refs" / "stash").exists() or (common_dir / "refs" / "stash").is_symlink():
            loose.append("refs/stash")
        for name in loose:
            path = common_dir / name
            if path.is_symlink() or not valid_ref_name(name):
                return None
            text = path.read_bytes().decode("ascii")
            if not text.endswith("\n") or not _is_full_sha(text[:-1]):
                return None
            refs[name] = text[:-1]
    except (OSError, UnicodeDecodeError):
        return None
    return refs


def _loose_ref_names(common_dir: Path, root: str) -> list[str]:
    """The loose refs below `common_dir/root` by name (lock files left out); a symlinked
    directory is named itself, so that the caller refuses it."""
    names: list[str] = []
    top = common_dir / root
    for dirpath, dirnames, filenames in os.walk(top):
        rel = Path(dirpath).relative_to(common_dir).as_posix()
        names += [f"{rel}/{d}" for d in dirnames if Path(dirpath, d).is_symlink()]
        names += [f"{rel}/{f}" for f in filenames if not f.endswith(".lock")]
    return names


def _literal_ignore_pattern(path: str) -> str:
    """A gitignore pattern matching exactly `path` (relative to the top; a trailing `/`
    for a directory, as `git status` shows one)."""
    body = re.sub(r"([\\*?\[])", r"\\\1", path)
    if body.endswith(" "):
        body = body[:-1] + "\\ "
    return "/" + body


def _head_file_branch(git_dir: Path) -> str | None:
    """The branch `git_dir/HEAD` names when it is a plain `ref: refs/heads/<b>` line; None
    for anything else (a detached HEAD, a `.git` file, the reftable stub): ask git then."""
    try:
        head = (git_dir / "HEAD").read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    ref = head[len("ref: ") : -1] if head.startswith("ref: refs/heads/") and head.endswith("\n") else ""
    return ref.removeprefix("refs/heads/") if valid_ref_name(ref) else None


def _read_dotgit(wt: Path) -> bytes | None:
    """What `wt/.git` holds when it is a file (a linked worktree's pointer), else None."""
    try:
        with open(wt / ".git", "rb") as f:
            return f.read(4096)
    except OSError:
        return None


_FULL_SHA = re.compile(r"(?:[0-9a-f]{40}|[0-9a-f]{64})")


def _is_full_sha(ref: str) -> bool:
    return _FULL_SHA.fullmatch(ref) is not None


def _plain_ref(ref: str) -> bool:
    """A full sha, or a name git takes as it is (no `..`, `^`, `~`, `:`, `@{`, no option)."""
    return _is_full_sha(ref) or (_safe_ref_arg(ref) and valid_ref_name("refs/heads/" + ref))


def _safe_ref_arg(ref: str) -> bool:
    """False for what git would take as an option or what cannot be a ref at all."""
    return bool(ref) and not ref.startswith("-") and not any(c in ref for c in "\0\n\r")


def _message_with_trailers(message: str, trailers: Mapping[str, str], where: str) -> str:
    body = message.strip()
    if not body:
        raise GitError(f"empty commit message for {where}", fix="pass a commit message")
    lines = []
    for key, value in trailers.items():
        if not _TRAILER_KEY.match(key) or any(c in value for c in "\0\n\r"):
            raise GitError(
                f"invalid commit trailer {key!r}: {value!r} for {where}",
                fix="trailer keys are letters, digits and '-'; values are one line",
            )
        lines.append(f"{key}: {value.strip()}")
    return body + ("\n\n" + "\n".join(lines) if lines else "") + "\n"


def init_repository(path: Path, branch: str, message: str) -> str:
    """A new repository at `path` holding its current files in one commit (the demo's
    sample). Returns the commit sha."""
    path.mkdir(parents=True, exist_ok=True)
    git = LocalGitCli(path)
    git.check_available()
    git._ok("init", "-q", "-b", branch)
    git._ok("add", "-A")
    git._ok("commit", "-q", "-m", message)
    sha = git.resolve("HEAD")
    assert sha is not None
    return sha
