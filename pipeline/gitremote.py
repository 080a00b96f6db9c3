"""The remote git worker: git operations sent through an outbox directory (layer L2).

For a supervisor that runs where git is not (a slim container; DESIGN §9, the "external
git service" of background/): `RemoteGitAdapter` is a GitAdapter that runs no git itself.
Each call becomes an intent file, and a worker on a machine with git (a sidecar container
sharing the volume) applies it with `LocalGitCli` and writes the result back:

    <outbox>/requests/<id>.json      the supervisor's intent (written atomically)
    <outbox>/claimed/<worker>/<id>.json   taken by a worker (an atomic rename)
    <outbox>/done/<id>.json          the worker's ledger: the result, written first
    <outbox>/results/<id>.json       the result; the supervisor reads and removes it
    <outbox>/workers/<worker>.json   a worker's heartbeat (its mtime, touched every second)
    <outbox>/rejected/               request files whose names cannot be ids

A request is `{"protocol": 1, "id", "op", "repo", "args", ...}`: `op` is the name of a
GitAdapter method, `repo` the absolute path of the target repository, `args` the method's
arguments by name as JSON (paths as absolute path strings; a text that is not valid UTF-8 as
`{"surrogateescape_b64": ...}`; `apply` sends the patch's bytes as base64 in `patch`, so the
worker needs no access to the run directory). A result is `{"protocol", "id", "op", "ok",
"value"}` or `{..., "ok": false, "error": {"kind", "message", "fix"}}`; dataclass values
(ApplyResult, IntegrationStatus, WorktreeEntry) travel as objects of their fields. An
error becomes the same `GitError` (message and fix) that `LocalGitCli` would have raised.

Ids begin with the time in nanoseconds, so a worker applies requests in the order they
were made. A request id found in the ledger is never applied again (a re-delivered file
gets the recorded result back). A malformed request gets an error result, never a crash.
A request a worker took but never answered (the worker died) is retried by the next worker
when the operation can be repeated safely; otherwise (apply, commit, commit_changes,
merge_no_ff) it gets an error result saying its effect is unknown.

The supervisor waits `timeout_s` for a result. When no worker has signalled in the outbox
(no fresh heartbeat) after `min(timeout_s, NO_WORKER_GRACE_S)`, it stops waiting early.
Either way a request no worker has taken is withdrawn, and the GitError names the outbox
and the command that starts a worker.

Selecting it: `make_adapter(repo)` returns a RemoteGitAdapter when `AUTOPACK_GIT_OUTBOX`
names the outbox (timeout: `AUTOPACK_GIT_TIMEOUT_S`), else LocalGitCli. An environment
variable, not a plan field: where git runs is a property of the deployment, and the same
plan runs in both. Both sides must see the target repository, the workspace's worktrees
and the outbox at the same paths. Anyone who can write the outbox can drive git in any
repository the worker can reach: give it the permissions of the supervisor's workspace.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import itertools
import os
import re
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from pipeline.errors import AutopackError, GitError, InvalidInput
from pipeline.git import ApplyResult, GitAdapter, IntegrationStatus, LocalGitCli, RefsState, WorktreeEntry
from pipeline.jsonio import canonical_json, write_json_atomic, write_text_atomic

OUTBOX_ENV = "AUTOPACK_GIT_OUTBOX"
TIMEOUT_ENV = "AUTOPACK_GIT_TIMEOUT_S"
PROTOCOL = 1
# A phase's git work is ~20 operations of at most a few git calls each; LocalGitCli gives
# one git call 600 s. A request may also wait behind another run's in the worker's queue.
DEFAULT_TIMEOUT_S = 900.0
NO_WORKER_GRACE_S = 15.0
HEARTBEAT_S = 1.0
HEARTBEAT_STALE_S = 10.0
LEDGER_KEEP_S = 7 * 24 * 3600.0
_PRUNE_EVERY_S = 3600.0

REQUESTS = "requests"
CLAIMED = "claimed"
RESULTS = "results"
DONE = "done"
WORKERS = "workers"
REJECTED = "rejected"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Argument kinds: str, opt_str, path, bool, trailers (dict[str, str]), bytes, str_list,
# refs_state (RefsState).
_OPS: dict[str, tuple[tuple[str, str], ...]] = {
    "check_available": (),
    "toplevel": (),
    "current_branch": (),
    "resolve": (("ref", "str"),),
    "branch_exists": (("name", "str"),),
    "ensure_worktree": (("branch", "str"), ("base", "str"), ("path", "path")),
    "head": (("worktree", "path"),),
    "is_dirty": (("worktree", "path"),),
    "assert_clean": (("worktree", "path"),),
    "collect_patch": (("worktree", "path"), ("base_commit", "str")),
    "reset_to": (("worktree", "path"), ("branch", "str"), ("commit", "str")),
    "apply": (("worktree", "path"), ("patch", "bytes")),
    "commit": (("worktree", "path"), ("message", "str"), ("trailers", "trailers"), ("allow_empty", "bool")),
    "commit_changes": (("worktree", "path"), ("message", "str"), ("trailers", "trailers")),
    "tag": (("worktree", "path"), ("name", "str"), ("commit", "str"), ("message", "str")),
    "tag_target": (("name", "str"),),
    "find_commit_with_trailer": (("branch", "str"), ("key", "str"), ("value", "str"), ("since", "opt_str")),
    "integration_status": (("worktree", "path"), ("base", "str"), ("branch", "str")),
    "remove_worktree": (("path", "path"),),
    "merge_no_ff": (("into", "str"), ("branch", "str"), ("message", "str"), ("worktree", "path")),
    "is_ancestor": (("ancestor", "str"), ("descendant", "str")),
    "checked_out_in": (("branch", "str"),),
    "last_commit": (),
    "worktrees": (),
    "refs_state": (),
    "tracked_symlinks": (("worktree", "path"),),
    "restore_refs": (("before", "refs_state"), ("keep", "str_list"), ("quarantine", "str")),
}
# What a worker may apply again when its predecessor died before answering: reads, and
# operations that are idempotent by design (ensure_worktree, reset_to, tag, remove_worktree,
# restore_refs).
NOT_REPEATABLE = frozenset({"apply", "commit", "commit_changes", "merge_no_ff"})
REPEATABLE = frozenset(set(_OPS) - NOT_REPEATABLE)
OPS = frozenset(_OPS)


def _start_fix(outbox: Path) -> str:
    return (
        f"start a git worker where git is installed and {outbox} is shared: "
        f"`doit git_worker --outbox {outbox}` (or `python -m pipeline git_worker --outbox {outbox}`); "
        f"or unset {OUTBOX_ENV} to run git on this machine"
    )


# -- choosing the adapter -------------------------------------------------------------------


def outbox_from_env(env: Mapping[str, str] | None = None) -> Path | None:
    """The outbox `AUTOPACK_GIT_OUTBOX` names (absolute), or None for local git."""
    value = (os.environ if env is None else env).get(OUTBOX_ENV, "").strip()
    return Path(value).absolute() if value else None


def timeout_from_env(env: Mapping[str, str] | None = None) -> float:
    """`AUTOPACK_GIT_TIMEOUT_S` (seconds a request waits for its result), or the default."""
    value = (os.environ if env is None else env).get(TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise InvalidInput(
            f"{TIMEOUT_ENV}={value!r} is not a number of seconds above 0",
            f"set it to e.g. 900, or unset it (default {DEFAULT_TIMEOUT_S:.0f})",
        )
    return seconds


def make_adapter(repo: Path, env: Mapping[str, str] | None = None) -> GitAdapter:
    """The GitAdapter for the repository at `repo`: remote when `AUTOPACK_GIT_OUTBOX` is
    set, host git (LocalGitCli) otherwise."""
    outbox = outbox_from_env(env)
    if outbox is None:
        return LocalGitCli(repo)
    return RemoteGitAdapter(outbox, repo, timeout_from_env(env))


# -- encoding -----------------------------------------------------------------------------


class _Malformed(Exception):
    """A request (or result) that does not follow the protocol."""


def _enc_text(text: str) -> object:
    """A str as JSON: as it is when it is valid UTF-8, else its surrogate-escaped bytes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", errors="surrogateescape")
        return {"surrogateescape_b64": base64.b64encode(raw).decode("ascii")}
    return text


def _dec_text(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {"surrogateescape_b64"}:
        return _b64(value["surrogateescape_b64"], where).decode("utf-8", errors="surrogateescape")
    raise _Malformed(f"{where} must be a string, not {_json_type(value)}")


def _b64(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise _Malformed(f"{where} must be a base64 string, not {_json_type(value)}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise _Malformed(f"{where} is not valid base64 ({exc})") from None


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def _encode_arg(kind: str, value: object) -> object:
    if kind == "path":
        return str(Path(str(value)).absolute())
    if kind == "bytes":
        assert isinstance(value, bytes)
        return base64.b64encode(value).decode("ascii")
    if kind == "trailers":
        assert isinstance(value, Mapping)
        return {str(k): _enc_text(str(v)) for k, v in value.items()}
    if kind == "str_list":
        assert isinstance(value, Collection) and not isinstance(value, str)
        return [_enc_text(str(v)) for v in sorted(value)]
    if kind == "refs_state":
        return _encode_value(value)
    if kind in ("str", "opt_str") and isinstance(value, str):
        return _enc_text(value)
    return value


def _decode_arg(kind: str, value: object, where: str) -> object:
    if kind == "str":
        return _dec_text(value, where)
    if kind == "opt_str":
        return None if value is None else _dec_text(value, where)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _Malformed(f"{where} must be true or false, not {_json_type(value)}")
        return value
    if kind == "path":
        text = _dec_text(value, where)
        if not text or "\0" in text or not Path(text).is_absolute():
            raise _Malformed(f"{where} must be an absolute path, not {text!r}")
        return Path(text)
    if kind == "bytes":
        return _b64(value, where)
    if kind == "trailers":
        if not isinstance(value, dict):
            raise _Malformed(f"{where} must be an object of strings, not {_json_type(value)}")
        return {str(k): _dec_text(v, f"{where}.{k}") for k, v in value.items()}
    if kind == "str_list":
        if not isinstance(value, list):
            raise _Malformed(f"{where} must be an array of strings, not {_json_type(value)}")
        return [_dec_text(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind == "refs_state":
        return _refs_state(value, where)
    raise AssertionError(kind)


def _refs_state(value: object, where: str) -> RefsState:
    """A RefsState from its JSON: {"refs": {name: sha}, "stash_log": base64 or null}."""
    if not isinstance(value, dict) or not isinstance(value.get("refs"), dict):
        raise _Malformed(f"{where} must be an object with 'refs' (an object of strings) and 'stash_log'")
    refs = {str(k): _dec_text(v, f"{where}.refs.{k}") for k, v in value["refs"].items()}
    log = value.get("stash_log")
    return RefsState(refs, None if log is None else _b64(log, f"{where}.stash_log"))


def encode_request(request_id: str, op: str, repo: Path, args: Mapping[str, object]) -> dict[str, object]:
    """The JSON of a request for `op` (a GitAdapter method) with `args` by name."""
    spec = _OPS[op]
    return {
        "protocol": PROTOCOL,
        "id": request_id,
        "op": op,
        "repo": str(Path(repo).absolute()),
        "args": {name: _encode_arg(kind, args[name]) for name, kind in spec},
        "client": {"host": socket.gethostname(), "pid": os.getpid()},
    }


@dataclass(frozen=True)
class Request:
    """A request read back and checked against the protocol."""

    request_id: str
    op: str
    repo: Path
    args: dict[str, object]


def decode_request(data: object, request_id: str) -> Request:
    """`data` (a parsed request file named `<request_id>.json`) checked; _Malformed if not."""
    if not isinstance(data, dict):
        raise _Malformed(f"a request must be a JSON object, not {_json_type(data)}")
    if data.get("protocol") != PROTOCOL:
        raise _Malformed(f"protocol {data.get('protocol')!r} is not supported by this worker (it speaks {PROTOCOL})")
    if data.get("id") != request_id:
        raise _Malformed(f"the request's id {data.get('id')!r} does not match its file name {request_id}.json")
    op = data.get("op")
    if not isinstance(op, str) or op not in _OPS:
        raise _Malformed(f"unknown operation {op!r} (known: {', '.join(sorted(_OPS))})")
    repo = _decode_arg("path", data.get("repo"), "repo")
    assert isinstance(repo, Path)
    raw = data.get("args", {})
    if not isinstance(raw, dict):
        raise _Malformed(f"args must be an object, not {_json_type(raw)}")
    spec = dict(_OPS[op])
    unknown = sorted(set(raw) - set(spec))
    if unknown:
        raise _Malformed(f"{op} takes no argument(s) {', '.join(unknown)} (it takes: {', '.join(spec) or 'none'})")
    missing = [name for name in spec if name not in raw]
    if missing:
        raise _Malformed(f"{op} is missing argument(s) {', '.join(missing)}")
    args = {name: _decode_arg(kind, raw[name], f"args.{name}") for name, kind in spec.items()}
    return Request(request_id, op, repo, args)


def _encode_value(value: object) -> object:
    if isinstance(value, str):
        return _enc_text(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, ApplyResult):
        return {"ok": value.ok, "three_way": value.three_way, "message": _enc_text(value.message)}
    if isinstance(value, IntegrationStatus):
        return {
            "ahead": value.ahead,
            "behind": value.behind,
            "head": value.head,
            "last_snapshot": value.last_snapshot,
            "dirty": value.dirty,
        }
    if isinstance(value, WorktreeEntry):
        return {
            "path": str(value.path),
            "head": value.head,
            "branch": value.branch,
            "main": value.main,
            "locked": value.locked,
        }
    if isinstance(value, RefsState):
        return {
            "refs": {k: _enc_text(v) for k, v in value.refs.items()},
            "stash_log": None if value.stash_log is None else base64.b64encode(value.stash_log).decode("ascii"),
        }
    if isinstance(value, list | tuple):
        return [_encode_value(v) for v in value]
    return value


# -- the supervisor's side ----------------------------------------------------------------


def _field(data: object, name: str, *types: type) -> Any:
    if not isinstance(data, dict) or name not in data or not isinstance(data[name], types):
        raise _Malformed(f"field {name!r} is missing or of the wrong type")
    return data[name]


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
            if _field(data, "id", str) != request_id or _field(data, "op", str) != op:
                raise _Malformed(f"it answers request {data.get('id')!r} ({data.get('op')!r})")
            if _field(data, "ok", bool):
                return data.get("value")
            error = _field(data, "error", dict)
            message = _dec_text(_field(error, "message", str, dict), "error.message")
            fix = _dec_text(error.get("fix", ""), "error.fix")
        except _Malformed as exc:
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
                fix=_start_fix(self.outbox),
            )
        raise GitError(
            f"git {op} for {self.repo} got no result from the git worker on the outbox {self.outbox} "
            f"within {self.timeout_s:g}s ({fate})",
            fix=f"{_start_fix(self.outbox)}; if a worker runs but is slow, raise {TIMEOUT_ENV}",
        )

    def _wrong(self, op: str, value: object, what: str) -> GitError:
        return GitError(
            f"the git worker answered {op} with {_json_type(value)}, not {what}",
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
            return _dec_text(value, op)
        except _Malformed:
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
        patch = Path(patch_path).resolve()
        if not patch.is_file():
            raise GitError(
                f"patch file {patch} does not exist",
                fix="check the attempt directory; the patch is written before it is applied",
            )
        data = self._object("apply", worktree=worktree, patch=patch.read_bytes())
        try:
            return ApplyResult(
                ok=_field(data, "ok", bool),
                three_way=_field(data, "three_way", bool),
                message=_dec_text(_field(data, "message", str, dict), "message"),
            )
        except _Malformed as exc:
            raise self._malformed_value("apply", exc) from None

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
                ahead=_field(data, "ahead", int),
                behind=_field(data, "behind", int),
                head=_field(data, "head", str),
                last_snapshot=_opt_field(data, "last_snapshot"),
                dirty=_field(data, "dirty", bool),
            )
        except _Malformed as exc:
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
            return _refs_state(data, "refs_state")
        except _Malformed as exc:
            raise self._malformed_value("refs_state", exc) from None

    def restore_refs(self, before: RefsState, keep: Collection[str], quarantine: str) -> list[str]:
        value = self._call("restore_refs", before=before, keep=keep, quarantine=quarantine)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [str(v) for v in value]
        raise self._wrong("restore_refs", value, "an array of strings")

    def worktrees(self) -> list[WorktreeEntry]:
        value = self._call("worktrees")
        if not isinstance(value, list):
            raise self._wrong("worktrees", value, "an array")
        try:
            return [_worktree_entry(item) for item in value]
        except _Malformed as exc:
            raise self._malformed_value("worktrees", exc) from None


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
    raise _Malformed(f"field {name!r} is of the wrong type")


def _worktree_entry(item: object) -> WorktreeEntry:
    if not isinstance(item, dict):
        raise _Malformed(f"a worktree entry must be an object, not {_json_type(item)}")
    return WorktreeEntry(
        path=Path(_field(item, "path", str)),
        head=_opt_field(item, "head"),
        branch=_opt_field(item, "branch"),
        main=_field(item, "main", bool),
        locked=_field(item, "locked", bool),
    )


def worker_alive(outbox: Path, stale_s: float = HEARTBEAT_STALE_S) -> bool:
    """Some worker touched its heartbeat file in `outbox` within `stale_s` seconds."""
    now = time.time()
    try:
        with os.scandir(outbox / WORKERS) as it:
            for entry in it:
                if entry.name.endswith(".json") and not entry.name.startswith("."):
                    with contextlib.suppress(OSError):
                        if now - entry.stat().st_mtime <= stale_s:
                            return True
    except OSError:
        return False
    return False


# -- the worker's side --------------------------------------------------------------------


@dataclass
class WorkerStats:
    """What one `serve` did."""

    applied: int = 0
    failed: int = 0
    replayed: int = 0
    malformed: int = 0
    rejected: int = 0
    recovered: int = 0
    ops: dict[str, int] = field(default_factory=dict)

    def render(self) -> str:
        return (
            f"{self.applied} applied ({self.failed} of them failed), {self.malformed} malformed, "
            f"{self.replayed} re-delivered (answered from the ledger), {self.rejected} rejected, "
            f"{self.recovered} recovered from a stopped worker"
        )


def _request_names(directory: Path) -> list[str]:
    try:
        with os.scandir(directory) as it:
            return sorted(e.name for e in it if e.name.endswith(".json") and not e.name.startswith("."))
    except FileNotFoundError:
        return []


class GitWorker:
    """Applies the requests in `outbox` with LocalGitCli, in the order of their ids."""

    def __init__(self, outbox: Path, log: Callable[[str], None] | None = None) -> None:
        self.outbox = Path(outbox).absolute()
        host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:40] or "host"
        self.worker_id = f"{host}-{os.getpid()}-{secrets.token_hex(3)}"
        self.stats = WorkerStats()
        self._log = log or (lambda _line: None)
        self._clis: dict[Path, LocalGitCli] = {}
        self._stop = threading.Event()
        self._last_prune = 0.0
        self._last_recover = 0.0

    @property
    def heartbeat(self) -> Path:
        return self.outbox / WORKERS / f"{self.worker_id}.json"

    @property
    def claimed_dir(self) -> Path:
        return self.outbox / CLAIMED / self.worker_id

    def stop(self) -> None:
        """Finish the request in hand, then return from `serve`."""
        self._stop.set()

    # -- the loop ------------------------------------------------------------------------

    def serve(self, *, once: bool = False, idle_exit_s: float | None = None, poll_s: float = 0.02) -> WorkerStats:
        """Apply requests until stopped (SIGTERM/SIGINT, `stop()`), or with `once` until none
        is pending, or after `idle_exit_s` seconds without a request."""
        for name in (REQUESTS, RESULTS, DONE, WORKERS):
            (self.outbox / name).mkdir(parents=True, exist_ok=True)
        version = LocalGitCli(self.outbox).check_available()
        self.claimed_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            self.heartbeat,
            {"worker": self.worker_id, "host": socket.gethostname(), "pid": os.getpid(), "git_version": version},
        )
        beat = threading.Thread(target=self._beat, name="autopack-git-worker-heartbeat", daemon=True)
        beat.start()
        restore = self._install_signals()
        try:
            self._recover()
            self._prune()
            idle_since = time.monotonic()
            delay = 0.001
            while not self._stop.is_set():
                done = self.process_pending()
                if once:
                    break
                now = time.monotonic()
                if done:
                    idle_since, delay = now, 0.001
                    continue
                if idle_exit_s is not None and now - idle_since >= idle_exit_s:
                    break
                if now - self._last_recover >= HEARTBEAT_STALE_S:
                    self._recover()  # another worker may have died with requests in hand
                if now - self._last_prune >= _PRUNE_EVERY_S:
                    self._prune()
                self._stop.wait(delay)
                delay = min(delay * 1.5, poll_s)
        finally:
            self._stop.set()
            beat.join()
            restore()
            with contextlib.suppress(OSError):
                self.heartbeat.unlink()
            with contextlib.suppress(OSError):
                self.claimed_dir.rmdir()
        return self.stats

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.heartbeat)

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(_signum: int, _frame: FrameType | None) -> None:
            self._stop.set()

        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, previous in old.items():
                signal.signal(sig, previous)

        return restore

    def process_pending(self) -> int:
        """Handle every request now in requests/, oldest id first; how many were handled."""
        handled = 0
        for name in _request_names(self.outbox / REQUESTS):
            if self._stop.is_set() and handled:
                break
            self.handle(name)
            handled += 1
        return handled

    # -- one request -----------------------------------------------------------------------

    def handle(self, name: str) -> None:
        """Claim `requests/<name>`, apply it unless the ledger has it, publish the result."""
        source = self.outbox / REQUESTS / name
        request_id = name.removesuffix(".json")
        if not _ID.match(request_id):
            rejected = self.outbox / REJECTED
            rejected.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.replace(source, rejected / name)
                self.stats.rejected += 1
                self._log(f"rejected {name}: a request id is letters, digits, '.', '_', '-' (moved to {REJECTED}/)")
            return
        claim = self.claimed_dir / name
        try:
            os.replace(source, claim)
        except FileNotFoundError:
            return  # another worker took it
        if self._replay(request_id) or self._in_flight_elsewhere(name):
            _discard(claim)
            return
        self._apply_claim(request_id, claim)

    def _replay(self, request_id: str) -> bool:
        """A request the ledger already answered gets that answer again, nothing more."""
        ledger = self.outbox / DONE / f"{request_id}.json"
        try:
            text = ledger.read_text(encoding="utf-8")
        except FileNotFoundError:
            return False
        write_text_atomic(self.outbox / RESULTS / f"{request_id}.json", text)
        self.stats.replayed += 1
        self._log(f"{request_id}: already applied; re-published its result from {DONE}/")
        return True

    def _in_flight_elsewhere(self, name: str) -> bool:
        """Another worker holds a copy of this request (a re-delivery while it is applied)."""
        for other in (self.outbox / CLAIMED).glob(f"*/{name}"):
            if other.parent != self.claimed_dir:
                self._log(f"{name}: another worker is applying it; this copy is dropped")
                return True
        return False

    def _apply_claim(self, request_id: str, claim: Path) -> None:
        import json

        try:
            data = json.loads(claim.read_bytes().decode("utf-8"))
            request = decode_request(data, request_id)
        except (OSError, ValueError, _Malformed) as exc:  # OSError: e.g. a directory named <id>.json
            self.stats.malformed += 1
            self._publish(
                request_id,
                _op_of(claim),
                _error(
                    "malformed",
                    f"malformed git request {request_id}: {exc}",
                    "write requests with RemoteGitAdapter (the same Autopack version on both sides)",
                ),
            )
            _discard(claim)
            return
        self._publish(request_id, request.op, self._run(request))
        _discard(claim)

    def _run(self, request: Request) -> dict[str, object]:
        started = time.monotonic()
        self.stats.ops[request.op] = self.stats.ops.get(request.op, 0) + 1
        try:
            value = self._dispatch(request)
        except GitError as exc:
            self.stats.failed += 1
            outcome = _error("git_error", exc.message, exc.fix)
        except AutopackError as exc:
            self.stats.failed += 1
            outcome = _error("invalid", exc.message, exc.fix)
        except Exception as exc:  # a bug must not stop the worker serving other requests
            self.stats.failed += 1
            outcome = _error(
                "internal",
                f"the git worker failed on {request.op}: {exc!r} (a bug in Autopack)",
                "report it with the worker's log and this result (in the outbox's done/ folder); the worker "
                "goes on with the next request",
            )
        else:
            outcome = {"ok": True, "value": _encode_value(value)}
        self.stats.applied += 1
        took = time.monotonic() - started
        verdict = "ok" if outcome["ok"] else f"error: {outcome['error']}"
        self._log(f"{request.request_id}: {request.op} in {request.repo} ({took:.3f}s) {verdict}")
        return outcome

    def _dispatch(self, request: Request) -> object:
        repo = request.repo
        if request.op != "check_available" and not repo.is_dir():
            raise GitError(
                f"the git worker on {socket.gethostname()} does not see the repository {repo}",
                fix="mount the target repository, the workspace and the outbox at the same paths for the "
                "supervisor and the git worker",
            )
        cli = self._clis.get(repo)
        if cli is None:
            cli = self._clis[repo] = LocalGitCli(repo)
        if request.op == "apply":
            patch = request.args["patch"]
            assert isinstance(patch, bytes)
            with tempfile.TemporaryDirectory(prefix="autopack-worker-") as tmp:
                path = Path(tmp) / "patch.diff"
                path.write_bytes(patch)
                return cli.apply(_path(request.args["worktree"]), path)
        method: Callable[..., object] = getattr(cli, request.op)
        return method(**request.args)

    def _publish(self, request_id: str, op: str | None, outcome: Mapping[str, object]) -> None:
        """Ledger first, then the result the supervisor waits for."""
        text = canonical_json({"protocol": PROTOCOL, "id": request_id, "op": op, "worker": self.worker_id, **outcome})
        write_text_atomic(self.outbox / DONE / f"{request_id}.json", text)
        write_text_atomic(self.outbox / RESULTS / f"{request_id}.json", text)

    # -- housekeeping ------------------------------------------------------------------------

    def _recover(self) -> None:
        """Requests claimed by workers that are gone (no fresh heartbeat): answered from the
        ledger, retried when repeatable, else answered with an error."""
        self._last_recover = time.monotonic()
        for holder in sorted((self.outbox / CLAIMED).glob("*")):
            if holder == self.claimed_dir or not holder.is_dir():
                continue
            beat = self.outbox / WORKERS / f"{holder.name}.json"
            with contextlib.suppress(OSError):
                if time.time() - beat.stat().st_mtime <= HEARTBEAT_STALE_S:
                    continue  # that worker is alive
            for name in _request_names(holder):
                self._recover_one(holder / name)
            with contextlib.suppress(OSError):
                beat.unlink()
            with contextlib.suppress(OSError):
                holder.rmdir()

    def _recover_one(self, stale: Path) -> None:
        request_id = stale.name.removesuffix(".json")
        claim = self.claimed_dir / stale.name
        try:
            os.replace(stale, claim)
        except FileNotFoundError:
            return
        self.stats.recovered += 1
        if self._replay(request_id):
            _discard(claim)
            return
        op = _op_of(claim)
        if op in NOT_REPEATABLE:
            self._publish(
                request_id,
                op,
                _error(
                    "interrupted",
                    f"the git worker stopped while applying {op} (request {request_id}); whether it took effect "
                    "is unknown",
                    "see in the run's worktree and branch (`git status`, `git log`) whether it took effect; "
                    "stop a git worker with SIGTERM or Ctrl-C, which lets it finish the request in hand",
                ),
            )
            _discard(claim)
            self._log(f"{request_id}: {op} was interrupted by a stopped worker; answered with an error")
            return
        self._log(f"{request_id}: retrying {op or 'a request'} a stopped worker had taken")
        self._apply_claim(request_id, claim)

    def _prune(self) -> None:
        """Ledger entries and unread results older than LEDGER_KEEP_S go."""
        self._last_prune = time.monotonic()
        cutoff = time.time() - LEDGER_KEEP_S
        for name in (DONE, RESULTS):
            for path in (self.outbox / name).glob("*.json"):
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()


def _discard(path: Path) -> None:
    """Remove a handled claim (a directory too: someone may create one named <id>.json)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _path(value: object) -> Path:
    assert isinstance(value, Path)
    return value


def _error(kind: str, message: str, fix: str) -> dict[str, object]:
    return {"ok": False, "error": {"kind": kind, "message": _enc_text(message), "fix": _enc_text(fix)}}


def _op_of(path: Path) -> str | None:
    """The op a (possibly malformed) request file names, if it names a known one."""
    import json

    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    op = data.get("op") if isinstance(data, dict) else None
    return op if isinstance(op, str) and op in _OPS else None


def serve(
    outbox: Path, *, once: bool = False, idle_exit_s: float | None = None, log: Callable[[str], None] | None = None
) -> WorkerStats:
    """Run a git worker on `outbox` (see GitWorker.serve)."""
    if idle_exit_s is not None and idle_exit_s < 0:
        raise InvalidInput(f"--idle-exit {idle_exit_s:g} is negative", "pass seconds >= 0 (0: never exit when idle)")
    return GitWorker(outbox, log).serve(once=once, idle_exit_s=idle_exit_s)
