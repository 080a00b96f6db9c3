"""Reading a file that any user, agent or tool may have put there (layer L1).

A path that should be a file may be a directory, a FIFO (reading one blocks until a
writer comes, maybe never), a device, or far too big to hold in memory. `read_regular`
opens without blocking, refuses anything but a regular file and reads at most
`max_bytes`, so each of those is one clear error instead of a hang, a crash or an
exhausted machine.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pipeline.core.errors import InvalidInput

MIB = 1024 * 1024
# The default cap for a JSON or YAML file Autopack reads (a run.json of a thousand phases
# is a few MB).
DEFAULT_MAX_BYTES = 64 * MIB


def read_regular(path: Path, what: str = "file", max_bytes: int = DEFAULT_MAX_BYTES, fix: str = "") -> bytes:
    """The bytes of the regular file at `path` (InvalidInput for anything else)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InvalidInput(f"{path}: file not found", fix or f"check the path of the {what}") from None
    except IsADirectoryError:
        raise InvalidInput(f"{path}: is a directory, expected a {what}", fix or "pass the path of a file") from None
    except PermissionError:
        raise InvalidInput(f"{path}: {what} is not readable (permission denied)", fix or "fix its mode") from None
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot open the {what}: {exc.strerror}", fix or "check the path") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InvalidInput(f"{path}: is a directory, expected a {what}", fix or "pass the path of a file")
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(
                f"{path}: is not a regular file (a FIFO, socket or device), expected a {what}",
                fix or "pass the path of a regular file",
            )
        if info.st_size > max_bytes:
            raise InvalidInput(
                f"{path}: the {what} is {info.st_size} bytes, more than the {max_bytes} allowed",
                fix or f"pass a {what} smaller than {max_bytes} bytes",
            )
        chunks = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, MIB))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew while read
        raise InvalidInput(
            f"{path}: the {what} is more than the {max_bytes} bytes allowed",
            fix or f"pass a {what} smaller than {max_bytes} bytes",
        )
    return data


def read_utf8(path: Path, what: str = "file", max_bytes: int = DEFAULT_MAX_BYTES, fix: str = "") -> str:
    """`read_regular`, decoded as UTF-8 (InvalidInput naming the first bad byte)."""
    data = read_regular(path, what, max_bytes, fix)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{path}: the {what} is not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x})",
            fix or f"pass a UTF-8 text {what}",
        ) from None
