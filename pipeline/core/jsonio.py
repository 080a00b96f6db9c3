"""Deterministic JSON and atomic writes (docs/architecture.md: Invariants, The run directory).

Every machine-written artifact goes through here: sorted keys, indent 2, UTF-8, trailing
newline; written to a temp file in the same directory, then `os.replace`d over the target,
so a process killed at any instant leaves either the old or the new file, never a partial
one. Rewriting an artifact with unchanged content touches nothing (no byte, no mtime), so
re-running a step leaves no git diff.

Durability: a file is fsynced (and its directory) before the rename, except below a
directory whose durability point is a run's event log (`log_is_durability_point`, a run
directory while its Recorder is open): there the log's fsynced appends are what survive
a power loss, and the record is checked against the log when it is opened again
(docs/architecture.md, Crash safety). A kill -9 loses nothing either way: a write is in
the kernel's page cache once the call returns.

pydantic is imported lazily: a writer that only needs `write_text_atomic` stays cheap to
start.

A writer may hold a write back for a moment (the Recorder does, for phase files saved
several times in one step) if it registers a barrier (`add_barrier`): barriers run before
every atomic write here and before every child process starts (`pipeline.core.proc.run`), so
what reaches the disk keeps the order in which it was written, and a process killed at
any instant leaves a state that writing everything at once could have left too.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline.core import failpoints
from pipeline.core.errors import InvalidInput, ValidationErrors

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound="BaseModel")


_BARRIERS: list[Callable[[], None]] = []
# Directories whose writes are made durable by an event log rather than one fsync each.
_LOG_DURABLE: set[Path] = set()


def log_is_durability_point(directory: Path) -> None:
    """Writes below `directory` are not fsynced one by one: its event log is (see the
    module docstring). For a run directory, by the run's Recorder."""
    _LOG_DURABLE.add(Path(os.path.abspath(directory)))


def _fsynced(path: Path) -> bool:
    """Is a write to `path` fsynced itself (not covered by an event log)?"""
    if not _LOG_DURABLE:
        return True
    where = Path(os.path.abspath(path))
    return not any(where.is_relative_to(d) for d in _LOG_DURABLE)


# Run before a child process starts (and by `barrier(children=True)`) only: an event
# log's deferred fsync (the Recorder's), which an artifact write need not wait for.
_CHILD_BARRIERS: list[Callable[[], None]] = []


def add_barrier(flush: Callable[[], None], *, children_only: bool = False) -> None:
    """Run `flush` before the next atomic write or child process (until removed); with
    `children_only`, before the next child process only."""
    barriers = _CHILD_BARRIERS if children_only else _BARRIERS
    if flush not in barriers:
        barriers.append(flush)


def remove_barrier(flush: Callable[[], None]) -> None:
    for barriers in (_BARRIERS, _CHILD_BARRIERS):
        if flush in barriers:
            barriers.remove(flush)


def barrier(children: bool = False) -> None:
    """Write whatever registered writers hold back (before any other durable effect);
    `children`: also what must be durable before a child process starts."""
    for flush in list(_BARRIERS):
        flush()
    if children:
        for flush in list(_CHILD_BARRIERS):
            flush()


def canonical_json(obj: object) -> str:
    """`obj` as JSON: sorted keys, indent 2, non-ASCII kept, trailing newline.

    The same data always gives the same text, whatever the key order of the input.
    NaN and infinities are refused (they are not JSON).
    """
    try:
        text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:  # NaN/inf, circular reference
        raise InvalidInput(f"cannot write JSON: {exc}", "store finite numbers only") from exc
    return text + "\n"


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` (`os.write` may write less than it was given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_text_atomic(path: Path, text: str) -> bool:
    """Atomically make `path` hold `text` (UTF-8). Returns False if it already did.

    Writes `.<name>.tmp.<pid>` beside the target, fsyncs it, replaces the target with it
    and fsyncs the directory (both fsyncs left to the event log below a directory it
    covers: `log_is_durability_point`). Parent directories are created. An unchanged file
    is not rewritten (its mtime stays).
    """
    barrier()
    path = Path(path)
    data = text.encode("utf-8")
    try:
        if path.read_bytes() == data:
            return False
    except (FileNotFoundError, NotADirectoryError):
        pass
    except IsADirectoryError as exc:
        raise InvalidInput(f"{path}: is a directory, cannot write a file there") from exc
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    durable = _fsynced(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except (FileNotFoundError, NotADirectoryError):  # a new directory: made only then (as before)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        failpoints.hit("atomic_write")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
    return True


def write_json_atomic(path: Path, obj: object) -> bool:
    """`write_text_atomic(path, canonical_json(obj))`."""
    return write_text_atomic(path, canonical_json(obj))


def json_path(loc: Sequence[int | str]) -> str:
    """A pydantic error location as a JSON path: ('a', 'b', 0, 'c') -> `$.a.b[0].c`."""
    out = "$"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier():
            out += f".{part}"
        else:
            out += "[" + json.dumps(part, ensure_ascii=False) + "]"
    return out


def validation_problems(path: Path | str, exc: ValidationError) -> list[str]:
    """One `path: $.json.path: message` line per pydantic error."""
    problems = []
    for err in exc.errors(include_url=False):
        problems.append(f"{path}: {json_path(err['loc'])}: {err['msg']}")
    return problems


def write_model(path: Path, model: BaseModel) -> bool:
    """Validate `model` by a round trip through its class, then write it atomically.

    Returns True when the file was (re)written, False when it already held this data.
    """
    return write_text_atomic(path, model_text(path, model))


def model_text(path: Path, model: BaseModel) -> str:
    """What `write_model(path, model)` writes: validated by a round trip through its class."""
    from pydantic import ValidationError

    data = model.model_dump(mode="json")
    try:
        type(model).model_validate(data)
    except ValidationError as exc:
        raise ValidationErrors(
            validation_problems(path, exc),
            f"{type(model).__name__} does not survive a JSON round trip; this is a bug in the code that built it",
        ) from exc
    return canonical_json(data)


# The largest integer an artifact may hold: exact in a double (JavaScript, DuckDB's JSON
# reader) and far from overflowing a 64-bit sum, so `validate`, `report` and `sql` agree.
MAX_JSON_INT = 2**53


class _IntTooLarge(ValueError):
    pass


def _bounded_int(text: str) -> int:
    if len(text) > 17 and abs(int(text)) > MAX_JSON_INT:
        raise _IntTooLarge(text)
    return int(text)


def read_json(path: Path) -> Any:
    """Parse the JSON file at `path`; errors name `path:line:col` and the fix."""
    from pipeline.core.inputs import read_regular

    path = Path(path)
    try:
        text = read_regular(path, "JSON file", fix="check the path, or create the artifact first").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text (byte {exc.start})", "save the file as UTF-8 JSON") from exc
    try:
        return json.loads(text, parse_int=_bounded_int)
    except _IntTooLarge as exc:
        raise InvalidInput(
            f"{path}: the number {exc.args[0][:24]}{'...' if len(exc.args[0]) > 24 else ''} is too large "
            f"(at most {MAX_JSON_INT} either way)",
            f"correct the number in {path}; `doit validate` rechecks",
        ) from None
    except RecursionError:
        raise InvalidInput(
            f"{path}: JSON nested too deeply to read", f"write {path} with far fewer nested arrays/objects"
        ) from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}",
            f"fix the JSON syntax at line {exc.lineno}, column {exc.colno} of {path}",
        ) from exc


def read_model(path: Path, cls: type[M]) -> M:
    """Read `path` and validate it as `cls`.

    A syntax error names `path:line:col`; a schema error lists every problem as
    `path: $.a.b[0].c: message`. Both are InvalidInput with a fix.
    """
    from pydantic import ValidationError

    data = read_json(path)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ValidationErrors(
            validation_problems(path, exc),
            f"edit {path} so that it is a valid {cls.__name__} (see schemas/)",
        ) from exc


def write_if_missing(path: Path, text: str) -> bool:
    """Write `text` atomically unless `path` exists (a file the user may have edited)."""
    if path.exists():
        return False
    return write_text_atomic(path, text)
