"""The remote git worker's protocol: git operations sent through an outbox directory.

For a supervisor that runs where git is not (a slim container): `RemoteGitAdapter` is a
GitAdapter that runs no git itself.
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
`{"surrogateescape_b64": ...}`; `apply` and `reapply` send the patch's bytes as base64 in
`patch`, so the worker needs no access to the run directory). A result is `{"protocol",
"id", "op", "ok", "value"}` or `{..., "ok": false, "error": {"kind", "message", "fix"}}`;
dataclass values (ApplyResult, IntegrationStatus, WorktreeEntry) travel as objects of
their fields. An error becomes the same `GitError` (message and fix) that `LocalGitCli`
would have raised.

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
import os
import re
import socket
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import InvalidInput
from pipeline.vcs.adapter import ApplyResult, IntegrationStatus, RefsState, WorktreeEntry

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


PRUNE_EVERY_S = 3600.0


REQUESTS = "requests"


CLAIMED = "claimed"


RESULTS = "results"


DONE = "done"


WORKERS = "workers"


REJECTED = "rejected"


ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# Argument kinds: str, opt_str, path, bool, trailers (dict[str, str]), bytes, str_list,
# refs_state (RefsState).
OP_ARGS: dict[str, tuple[tuple[str, str], ...]] = {
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
    "reapply": (("worktree", "path"), ("branch", "str"), ("commit", "str"), ("patch", "bytes")),
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
    "untracked_files": (("worktree", "path"), ("under", "str")),
    "changed_paths": (("worktree", "path"),),
    "restore_refs": (("before", "refs_state"), ("keep", "str_list"), ("quarantine", "str")),
    "branch_commits": (("branch", "str"), ("since", "str")),
}


# What a worker may apply again when its predecessor died before answering: reads, and
# operations that are idempotent by design (ensure_worktree, reset_to, reapply, tag,
# remove_worktree, restore_refs).
NOT_REPEATABLE = frozenset({"apply", "commit", "commit_changes", "merge_no_ff"})


REPEATABLE = frozenset(set(OP_ARGS) - NOT_REPEATABLE)


OPS = frozenset(OP_ARGS)


def start_fix(outbox: Path) -> str:
    return (
        f"start a git worker where git is installed and {outbox} is shared: "
        f"`doit git_worker --outbox {outbox}` (or `python -m pipeline git_worker --outbox {outbox}`); "
        f"or unset {OUTBOX_ENV} to run git on this machine"
    )


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


class Malformed(Exception):
    """A request (or result) that does not follow the protocol."""


def enc_text(text: str) -> object:
    """A str as JSON: as it is when it is valid UTF-8, else its surrogate-escaped bytes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", errors="surrogateescape")
        return {"surrogateescape_b64": base64.b64encode(raw).decode("ascii")}
    return text


def dec_text(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {"surrogateescape_b64"}:
        return _b64(value["surrogateescape_b64"], where).decode("utf-8", errors="surrogateescape")
    raise Malformed(f"{where} must be a string, not {json_type(value)}")


def _b64(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise Malformed(f"{where} must be a base64 string, not {json_type(value)}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise Malformed(f"{where} is not valid base64 ({exc})") from None


def json_type(value: object) -> str:
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
        return {str(k): enc_text(str(v)) for k, v in value.items()}
    if kind == "str_list":
        assert isinstance(value, Collection) and not isinstance(value, str)
        return [enc_text(str(v)) for v in sorted(value)]
    if kind == "refs_state":
        return encode_value(value)
    if kind in ("str", "opt_str") and isinstance(value, str):
        return enc_text(value)
    return value


def _decode_arg(kind: str, value: object, where: str) -> object:
    if kind == "str":
        return dec_text(value, where)
    if kind == "opt_str":
        return None if value is None else dec_text(value, where)
    if kind == "bool":
        if not isinstance(value, bool):
            raise Malformed(f"{where} must be true or false, not {json_type(value)}")
        return value
    if kind == "path":
        text = dec_text(value, where)
        if not text or "\0" in text or not Path(text).is_absolute():
            raise Malformed(f"{where} must be an absolute path, not {text!r}")
        return Path(text)
    if kind == "bytes":
        return _b64(value, where)
    if kind == "trailers":
        if not isinstance(value, dict):
            raise Malformed(f"{where} must be an object of strings, not {json_type(value)}")
        return {str(k): dec_text(v, f"{where}.{k}") for k, v in value.items()}
    if kind == "str_list":
        if not isinstance(value, list):
            raise Malformed(f"{where} must be an array of strings, not {json_type(value)}")
        return [dec_text(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind == "refs_state":
        return refs_state(value, where)
    raise AssertionError(kind)


def refs_state(value: object, where: str) -> RefsState:
    """A RefsState from its JSON: {"refs": {name: sha}, "stash_log": base64 or null}."""
    if not isinstance(value, dict) or not isinstance(value.get("refs"), dict):
        raise Malformed(f"{where} must be an object with 'refs' (an object of strings) and 'stash_log'")
    refs = {str(k): dec_text(v, f"{where}.refs.{k}") for k, v in value["refs"].items()}
    log = value.get("stash_log")
    return RefsState(refs, None if log is None else _b64(log, f"{where}.stash_log"))


def encode_request(request_id: str, op: str, repo: Path, args: Mapping[str, object]) -> dict[str, object]:
    """The JSON of a request for `op` (a GitAdapter method) with `args` by name."""
    spec = OP_ARGS[op]
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
    """`data` (a parsed request file named `<request_id>.json`) checked; Malformed if not."""
    if not isinstance(data, dict):
        raise Malformed(f"a request must be a JSON object, not {json_type(data)}")
    if data.get("protocol") != PROTOCOL:
        raise Malformed(f"protocol {data.get('protocol')!r} is not supported by this worker (it speaks {PROTOCOL})")
    if data.get("id") != request_id:
        raise Malformed(f"the request's id {data.get('id')!r} does not match its file name {request_id}.json")
    op = data.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise Malformed(f"unknown operation {op!r} (known: {', '.join(sorted(OPS))})")
    repo = _decode_arg("path", data.get("repo"), "repo")
    assert isinstance(repo, Path)
    raw = data.get("args", {})
    if not isinstance(raw, dict):
        raise Malformed(f"args must be an object, not {json_type(raw)}")
    spec = dict(OP_ARGS[op])
    unknown = sorted(set(raw) - set(spec))
    if unknown:
        raise Malformed(f"{op} takes no argument(s) {', '.join(unknown)} (it takes: {', '.join(spec) or 'none'})")
    missing = [name for name in spec if name not in raw]
    if missing:
        raise Malformed(f"{op} is missing argument(s) {', '.join(missing)}")
    args = {name: _decode_arg(kind, raw[name], f"args.{name}") for name, kind in spec.items()}
    return Request(request_id, op, repo, args)


def encode_value(value: object) -> object:
    if isinstance(value, str):
        return enc_text(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, ApplyResult):
        return {"ok": value.ok, "three_way": value.three_way, "message": enc_text(value.message)}
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
            "refs": {k: enc_text(v) for k, v in value.refs.items()},
            "stash_log": None if value.stash_log is None else base64.b64encode(value.stash_log).decode("ascii"),
        }
    if isinstance(value, list | tuple):
        return [encode_value(v) for v in value]
    return value


def required_field(data: object, name: str, *types: type) -> Any:
    if not isinstance(data, dict) or name not in data or not isinstance(data[name], types):
        raise Malformed(f"field {name!r} is missing or of the wrong type")
    return data[name]





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
