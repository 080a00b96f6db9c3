"""RemoteGitAdapter: the supervisor's side of the remote git worker (see pipeline/vcs/codec.py for
the protocol), and `make_adapter`, which picks it or LocalGitCli from the environment.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from pipeline.core.errors import GitError
from pipeline.core.jsonio import write_json_atomic
from pipeline.vcs.adapter import ApplyResult, GitAdapter, IntegrationStatus, RefsState, WorktreeEntry
from pipeline.vcs.codec import (
    DEFAULT_TIMEOUT_S,
    HEARTBEAT_STALE_S,
    NO_WORKER_GRACE_S,
    OUTBOX_ENV,
    REQUESTS,
    RESULTS,
    TIMEOUT_ENV,
    Malformed,
    dec_text,
    encode_request,
    json_type,
    outbox_from_env,
    refs_state,
    required_field,
    start_fix,
    timeout_from_env,
    worker_alive,
)
from pipeline.vcs.local import LocalGitCli


def make_adapter(repo: Path, env: Mapping[str, str] | None = None) -> GitAdapter:
    """The GitAdapter for the repository at `repo`: remote when `AUTOPACK_GIT_OUTBOX` is
    set, host git (LocalGitCli) otherwise."""
    outbox = outbox_from_env(env)
    if outbox is None:
        return LocalGitCli(repo)
    return RemoteGitAdapter(outbox, repo, timeout_from_env(env))


class RemoteGitAdapter:
    """GitAdapter that hands every operation to a git worker through `outbox`.

    It runs no git: it writes a request, waits for the result (`timeout_s`) and returns
    what LocalGitCli returned on the worker, or raises the GitError it raised there.
    """

    def __init__(self, outbox: Path, repo: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.outbox = Path(outbox).absolute()
        self.repo = Path(repo).absolute()
        self.timeout_s = float(timeout_s)
        self._client = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._seq = itertools.count(1)

    def __repr__(self) -> str:
        return f"RemoteGitAdapter(outbox={str(self.outbox)!r}, repo={str(self.repo)!r})"

    # -- the exchange --------------------------------------------------------------------

    def _new_id(self) -> str:
        return f"{time.time_ns():020d}-{self._client}-{next(self._seq):06d}"

    def _call(self, op: str, **args: object) -> object:
        if op != "check_available" and not self.repo.is_dir():
            # What LocalGitCli says here, without a round trip.
            raise GitError(
                f"target repository {self.repo} does not exist",
                fix="point target.repo in the plan at an existing git checkout",
            )
        request_id = self._new_id()
        request = self.outbox / REQUESTS / f"{request_id}.json"
        result = self.outbox / RESULTS / f"{request_id}.json"
        try:
            write_json_atomic(request, encode_request(request_id, op, self.repo, args))
        except OSError as exc:
            raise GitError(
                f"cannot write a git request into the outbox {self.outbox}: {exc}",
                fix=f"make {OUTBOX_ENV} name a writable directory that the git worker shares",
            ) from None
        data = self._wait(op, request_id, request, result)
        try:
            if required_field(data, "id", str) != request_id or required_field(data, "op", str) != op:
                raise Malformed(f"it answers request {data.get('id')!r} ({data.get('op')!r})")
            if required_field(data, "ok", bool):
                return data.get("value")
            error = required_field(data, "error", dict)
            message = dec_text(required_field(error, "message", str, dict), "error.message")
            fix = dec_text(error.get("fix", ""), "error.fix")
        except Malformed as exc:
            raise GitError(
                f"the git worker's result {result} for {op} is malformed: {exc}",
                fix="run the same Autopack version for the supervisor and the git worker",
            ) from None
        raise GitError(message, fix=fix)

    def _wait(self, op: str, request_id: str, request: Path, result: Path) -> dict[str, object]:
        started = time.monotonic()
        deadline = started + self.timeout_s
        grace_at = started + min(self.timeout_s, NO_WORKER_GRACE_S)
        delay = 0.0005
        while True:
            try:
                text = result.read_text(encoding="utf-8")
            except FileNotFoundError:
                pass
            else:
                return self._take(op, result, text)
            now = time.monotonic()
            if now >= deadline:
                withdrawn = _withdraw(request)
                self._give_up(op, now - started, withdrawn, no_worker=withdrawn and not worker_alive(self.outbox))
            if now >= grace_at and request.exists() and not worker_alive(self.outbox) and _withdraw(request):
                self._give_up(op, now - started, True, no_worker=True)
            time.sleep(delay)
            delay = min(delay * 1.5, 0.02)

    def _take(self, op: str, result: Path, text: str) -> dict[str, object]:
        import json

        with contextlib.suppress(OSError):
            result.unlink()  # the worker's ledger keeps it (done/)
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise GitError(
                f"the git worker's result {result} for {op} is not JSON: {exc}",
                fix="run the same Autopack version for the supervisor and the git worker",
            ) from None
        if not isinstance(data, dict):
            raise GitError(
                f"the git worker's result {result} for {op} is not a JSON object",
                fix="run the same Autopack version for the supervisor and the git worker",
            )
        return data

    def _give_up(self, op: str, waited: float, withdrawn: bool, *, no_worker: bool) -> None:
        fate = (
            "the request was withdrawn, nothing was applied"
            if withdrawn
            else "a worker took the request but did not answer; it may still be applied"
        )
        if no_worker:
            raise GitError(
                f"no git worker serves the outbox {self.outbox}: git {op} for {self.repo} got no answer "
                f"in {waited:.1f}s and no worker has signalled there in the last {HEARTBEAT_STALE_S:.0f}s "
                f"({fate})",
                fix=start_fix(self.outbox),
            )
        raise GitError(
            f"git {op} for {self.repo} got no result from the git worker on the outbox {self.outbox} "
            f"within {self.timeout_s:g}s ({fate})",
            fix=f"{start_fix(self.outbox)}; if a worker runs but is slow, raise {TIMEOUT_ENV}",
        )

    def _wrong(self, op: str, value: object, what: str) -> GitError:
        return GitError(
            f"the git worker answered {op} with {json_type(value)}, not {what}",
            fix="run the same Autopack version for the supervisor and the git worker",
        )

    def _malformed_value(self, op: str, exc: Exception) -> GitError:
        return GitError(
            f"the git worker's answer to {op} is malformed: {exc}",
            fix="run the same Autopack version for the supervisor and the git worker",
        )

    def _str(self, op: str, **args: object) -> str:
        value = self._call(op, **args)
        try:
            return dec_text(value, op)
        except Malformed:
            raise self._wrong(op, value, "a string") from None

    def _opt_str(self, op: str, **args: object) -> str | None:
        value = self._call(op, **args)
        if value is None or isinstance(value, str):
            return value
        raise self._wrong(op, value, "a string or null")

    def _bool(self, op: str, **args: object) -> bool:
        value = self._call(op, **args)
        if isinstance(value, bool):
            return value
        raise self._wrong(op, value, "a boolean")

    def _none(self, op: str, **args: object) -> None:
        value = self._call(op, **args)
        if value is not None:
            raise self._wrong(op, value, "null")

    def _object(self, op: str, **args: object) -> dict[str, Any]:
        value = self._call(op, **args)
        if isinstance(value, dict):
            return value
        raise self._wrong(op, value, "an object")

    # -- the GitAdapter methods ----------------------------------------------------------

    def check_available(self) -> str:
        """The git version on the worker (GitError if there is no worker, or no git there)."""
        return self._str("check_available")

    def toplevel(self) -> Path:
        return Path(self._str("toplevel"))

    def current_branch(self) -> str:
        return self._str("current_branch")

    def resolve(self, ref: str) -> str | None:
        return self._opt_str("resolve", ref=ref)

    def branch_exists(self, name: str) -> bool:
        return self._bool("branch_exists", name=name)

    def ensure_worktree(self, branch: str, base: str, path: Path) -> str:
        head = self._str("ensure_worktree", branch=branch, base=base, path=path)
        if not Path(path).absolute().is_dir():
            raise GitError(
                f"the git worker created the worktree {Path(path).absolute()}, but it is not visible here",
                fix="share the workspace (its .autopack/worktrees) with the git worker at the same path on both sides",
            )
        return head

    def head(self, worktree: Path) -> str:
        return self._str("head", worktree=worktree)

    def is_dirty(self, worktree: Path) -> bool:
        return self._bool("is_dirty", worktree=worktree)

    def assert_clean(self, worktree: Path) -> None:
        self._none("assert_clean", worktree=worktree)

    def collect_patch(self, worktree: Path, base_commit: str) -> str:
        return self._str("collect_patch", worktree=worktree, base_commit=base_commit)

    def reset_to(self, worktree: Path, branch: str, commit: str) -> None:
        self._none("reset_to", worktree=worktree, branch=branch, commit=commit)

    def apply(self, worktree: Path, patch_path: Path) -> ApplyResult:
        """Apply the patch at `patch_path` (its bytes travel in the request)."""
        return self._apply_result("apply", worktree=worktree, patch=_patch_bytes(patch_path))

    def reapply(self, worktree: Path, branch: str, commit: str, patch_path: Path) -> ApplyResult:
        """`reset_to` + `apply` in one request, the patch's bytes in it."""
        patch = _patch_bytes(patch_path)
        return self._apply_result("reapply", worktree=worktree, branch=branch, commit=commit, patch=patch)

    def _apply_result(self, op: str, **args: object) -> ApplyResult:
        data = self._object(op, **args)
        try:
            return ApplyResult(
                ok=required_field(data, "ok", bool),
                three_way=required_field(data, "three_way", bool),
                message=dec_text(required_field(data, "message", str, dict), "message"),
            )
        except Malformed as exc:
            raise self._malformed_value(op, exc) from None

    def commit(self, worktree: Path, message: str, trailers: dict[str, str], allow_empty: bool = False) -> str:
        return self._str("commit", worktree=worktree, message=message, trailers=trailers, allow_empty=allow_empty)

    def commit_changes(self, worktree: Path, message: str, trailers: dict[str, str]) -> bool:
        return self._bool("commit_changes", worktree=worktree, message=message, trailers=trailers)

    def tag(self, worktree: Path, name: str, commit: str, message: str) -> None:
        self._none("tag", worktree=worktree, name=name, commit=commit, message=message)

    def tag_target(self, name: str) -> str | None:
        return self._opt_str("tag_target", name=name)

    def find_commit_with_trailer(self, branch: str, key: str, value: str, since: str | None = None) -> str | None:
        return self._opt_str("find_commit_with_trailer", branch=branch, key=key, value=value, since=since)

    def integration_status(self, worktree: Path, base: str, branch: str) -> IntegrationStatus:
        data = self._object("integration_status", worktree=worktree, base=base, branch=branch)
        try:
            return IntegrationStatus(
                ahead=required_field(data, "ahead", int),
                behind=required_field(data, "behind", int),
                head=required_field(data, "head", str),
                last_snapshot=_opt_field(data, "last_snapshot"),
                dirty=required_field(data, "dirty", bool),
            )
        except Malformed as exc:
            raise self._malformed_value("integration_status", exc) from None

    def remove_worktree(self, path: Path) -> None:
        self._none("remove_worktree", path=path)

    def merge_no_ff(self, into: str, branch: str, message: str, worktree: Path) -> str:
        return self._str("merge_no_ff", into=into, branch=branch, message=message, worktree=worktree)

    def tracked_symlinks(self, worktree: Path) -> list[str]:
        value = self._call("tracked_symlinks", worktree=worktree)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._wrong("tracked_symlinks", value, "an array of paths")
        return [str(v) for v in value]

    def untracked_files(self, worktree: Path, under: str) -> list[str]:
        value = self._call("untracked_files", worktree=worktree, under=under)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._wrong("untracked_files", value, "an array of paths")
        return [str(v) for v in value]

    def changed_paths(self, worktree: Path) -> list[str]:
        value = self._call("changed_paths", worktree=worktree)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._wrong("changed_paths", value, "an array of paths")
        return [str(v) for v in value]

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return self._bool("is_ancestor", ancestor=ancestor, descendant=descendant)

    def checked_out_in(self, branch: str) -> Path | None:
        found = self._opt_str("checked_out_in", branch=branch)
        return None if found is None else Path(found)

    def last_commit(self) -> tuple[str, str] | None:
        value = self._call("last_commit")
        if value is None:
            return None
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
            return str(value[0]), str(value[1])
        raise self._wrong("last_commit", value, "a [sha, date] pair or null")

    def refs_state(self) -> RefsState:
        data = self._object("refs_state")
        try:
            return refs_state(data, "refs_state")
        except Malformed as exc:
            raise self._malformed_value("refs_state", exc) from None

    def restore_refs(self, before: RefsState, keep: Collection[str], quarantine: str) -> list[str]:
        value = self._call("restore_refs", before=before, keep=keep, quarantine=quarantine)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [str(v) for v in value]
        raise self._wrong("restore_refs", value, "an array of strings")

    def branch_commits(self, branch: str, since: str) -> list[str] | None:
        value = self._call("branch_commits", branch=branch, since=since)
        if value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return None if value is None else [str(v) for v in value]
        raise self._wrong("branch_commits", value, "an array of commits or null")

    def worktrees(self) -> list[WorktreeEntry]:
        value = self._call("worktrees")
        if not isinstance(value, list):
            raise self._wrong("worktrees", value, "an array")
        try:
            return [_worktree_entry(item) for item in value]
        except Malformed as exc:
            raise self._malformed_value("worktrees", exc) from None


def _patch_bytes(patch_path: Path) -> bytes:
    patch = Path(patch_path).resolve()
    if not patch.is_file():
        raise GitError(
            f"patch file {patch} does not exist",
            fix="check the attempt directory; the patch is written before it is applied",
        )
    return patch.read_bytes()


def _withdraw(request: Path) -> bool:
    """Take back a request no worker has taken yet; False if one has (it may be applied)."""
    try:
        request.unlink()
    except FileNotFoundError:
        return False
    return True


def _opt_field(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None or isinstance(value, str):
        return value
    raise Malformed(f"field {name!r} is of the wrong type")


def _worktree_entry(item: object) -> WorktreeEntry:
    if not isinstance(item, dict):
        raise Malformed(f"a worktree entry must be an object, not {json_type(item)}")
    return WorktreeEntry(
        path=Path(required_field(item, "path", str)),
        head=_opt_field(item, "head"),
        branch=_opt_field(item, "branch"),
        main=required_field(item, "main", bool),
        locked=required_field(item, "locked", bool),
    )
