"""GitWorker: the side of the remote git worker that runs where git is (see pipeline/vcs/codec.py
for the protocol). `doit git_worker --outbox DIR` serves it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from pipeline.core import failpoints
from pipeline.core.errors import AutopackError, GitError, InvalidInput
from pipeline.core.jsonio import canonical_json, write_json_atomic, write_text_atomic
from pipeline.vcs.codec import (
    CLAIMED,
    DONE,
    HEARTBEAT_S,
    HEARTBEAT_STALE_S,
    ID,
    LEDGER_KEEP_S,
    NOT_REPEATABLE,
    OPS,
    PROTOCOL,
    PRUNE_EVERY_S,
    REJECTED,
    REQUESTS,
    RESULTS,
    WORKERS,
    Malformed,
    Request,
    decode_request,
    enc_text,
    encode_value,
)
from pipeline.vcs.local import LocalGitCli


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
                if now - self._last_prune >= PRUNE_EVERY_S:
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
        if not ID.match(request_id):
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
        except (OSError, ValueError, Malformed) as exc:  # OSError: e.g. a directory named <id>.json
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
        outcome = self._run(request)
        failpoints.hit("worker_applied")  # applied, neither in the ledger nor answered yet
        failpoints.hit(f"worker_applied:{request.op}")
        self._publish(request_id, request.op, outcome)
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
            outcome = {"ok": True, "value": encode_value(value)}
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
        if request.op in ("apply", "reapply"):
            args = dict(request.args)
            patch = args.pop("patch")
            assert isinstance(patch, bytes)
            with tempfile.TemporaryDirectory(prefix="autopack-worker-") as tmp:
                path = Path(tmp) / "patch.diff"
                path.write_bytes(patch)
                return getattr(cli, request.op)(**args, patch_path=path)
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


def _error(kind: str, message: str, fix: str) -> dict[str, object]:
    return {"ok": False, "error": {"kind": kind, "message": enc_text(message), "fix": enc_text(fix)}}


def _op_of(path: Path) -> str | None:
    """The op a (possibly malformed) request file names, if it names a known one."""
    import json

    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    op = data.get("op") if isinstance(data, dict) else None
    return op if isinstance(op, str) and op in OPS else None


def serve(
    outbox: Path, *, once: bool = False, idle_exit_s: float | None = None, log: Callable[[str], None] | None = None
) -> WorkerStats:
    """Run a git worker on `outbox` (see GitWorker.serve)."""
    if idle_exit_s is not None and idle_exit_s < 0:
        raise InvalidInput(f"--idle-exit {idle_exit_s:g} is negative", "pass seconds >= 0 (0: never exit when idle)")
    return GitWorker(outbox, log).serve(once=once, idle_exit_s=idle_exit_s)
