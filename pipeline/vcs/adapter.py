"""The GitAdapter protocol: every git operation a run needs, and the values they return.

Two adapters implement it: `LocalGitCli` (pipeline/vcs/local.py, the host's git) and
`RemoteGitAdapter` (pipeline/vcs/remote.py, git through the remote worker's outbox).
Nothing above this folder runs git or reads git's files: it asks an adapter.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

SNAPSHOT_TRAILER = "Autopack-Phase"


# The only branches a run works on in place (`LocalGitCli.adopt_checkout`): its own
# integration branch, never a base branch (pipeline.run.context.branch_name makes them).
IN_PLACE_BRANCH_PREFIX = "autonomous/"


@dataclass(frozen=True)
class ApplyResult:
    """Whether a patch went in, and whether that needed a 3-way merge."""

    ok: bool
    three_way: bool
    message: str


@dataclass(frozen=True)
class IntegrationStatus:
    """Where the integration branch stands against its base."""

    ahead: int
    behind: int
    head: str
    last_snapshot: str | None
    dirty: bool


@dataclass(frozen=True)
class RefsState:
    """Branch/tag/stash ref values and the stash reflog at one moment."""

    refs: dict[str, str]
    stash_log: bytes | None


@dataclass(frozen=True)
class WorktreeEntry:
    """One line-group of `git worktree list --porcelain`."""

    path: Path
    head: str | None
    branch: str | None
    main: bool
    locked: bool


@runtime_checkable
class GitAdapter(Protocol):
    """What the supervisor needs from git; LocalGitCli runs host git, others may be remote."""

    def check_available(self) -> str: ...

    def toplevel(self) -> Path: ...

    def current_branch(self) -> str: ...

    def resolve(self, ref: str) -> str | None: ...

    def branch_exists(self, name: str) -> bool: ...

    def ensure_worktree(self, branch: str, base: str, path: Path) -> str: ...

    def head(self, worktree: Path) -> str: ...

    def is_dirty(self, worktree: Path) -> bool: ...

    def assert_clean(self, worktree: Path) -> None: ...

    def collect_patch(self, worktree: Path, base_commit: str) -> str: ...

    def reset_to(self, worktree: Path, branch: str, commit: str) -> None: ...

    def apply(self, worktree: Path, patch_path: Path) -> ApplyResult: ...

    def reapply(self, worktree: Path, branch: str, commit: str, patch_path: Path) -> ApplyResult: ...

    def commit(
        self,
        worktree: Path,
        message: str,
        trailers: dict[str, str],
        allow_empty: bool = False,
    ) -> str: ...

    def commit_changes(self, worktree: Path, message: str, trailers: dict[str, str]) -> bool: ...

    def refs_state(self) -> RefsState: ...

    def tracked_symlinks(self, worktree: Path) -> list[str]: ...

    def untracked_files(self, worktree: Path, under: str) -> list[str]: ...

    def changed_paths(self, worktree: Path) -> list[str]: ...

    def is_ancestor(self, ancestor: str, descendant: str) -> bool: ...

    def checked_out_in(self, branch: str) -> Path | None: ...

    def worktrees(self) -> list[WorktreeEntry]: ...

    def restore_refs(self, before: RefsState, keep: Collection[str], quarantine: str) -> list[str]: ...

    def tag(self, worktree: Path, name: str, commit: str, message: str) -> None: ...

    def tag_target(self, name: str) -> str | None: ...

    def find_commit_with_trailer(self, branch: str, key: str, value: str, since: str | None = None) -> str | None: ...

    def integration_status(self, worktree: Path, base: str, branch: str) -> IntegrationStatus: ...

    def remove_worktree(self, path: Path) -> None: ...

    def merge_no_ff(self, into: str, branch: str, message: str, worktree: Path) -> str: ...

    def branch_commits(self, branch: str, since: str) -> list[str] | None: ...


def encode_patch(text: str) -> bytes:
    """The bytes of a patch from `collect_patch` (non-UTF-8 file contents survive)."""
    return text.encode("utf-8", errors="surrogateescape")


_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def valid_ref_name(name: str) -> bool:
    """git's rules for a full ref name (`git check-ref-format <name>`, no options).

    At least two `/`-separated components, none empty, none starting with `.` or ending
    with `.lock`; no `..`, `@{`, control character, space, `~ ^ : ? * [ \\`; not ending
    with `.`; not `@`.
    """
    if "/" not in name or name.endswith(".") or ".." in name or "@{" in name:
        return False
    if _REF_FORBIDDEN.search(name):
        return False
    return all(c and not c.startswith(".") and not c.endswith(".lock") for c in name.split("/"))
