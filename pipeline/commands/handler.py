"""The single top-level error handler: every task's action runs inside `handled`.

Exit codes: 0 ok, 1 a failed step, 2 invalid input, 3 an internal bug (a crash report is
written). A reader that goes away (`python -m pipeline status --json | head -1`) ends the
output quietly, exit 0.
"""

from __future__ import annotations

import functools
import os
import select
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from pipeline.core.errors import EXIT_INTERNAL, AutopackError


def handled(action: Callable[..., None]) -> Callable[..., None]:
    """Map AutopackError to its one-line message + fix and exit code; a bug exits 3."""

    @functools.wraps(action)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            action(*args, **kwargs)
            sys.stdout.flush()  # a reader that went away shows here, not at exit
        except BrokenPipeError as exc:
            if not _stdout_gone():
                crash(exc, kwargs.get("run") or "")
            _silence_stdout()
            raise SystemExit(0) from None
        except AutopackError as exc:
            flush_stdout()
            print(exc.render(), file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            crash(exc, kwargs.get("run") or "")

    return wrapper


def crash(exc: BaseException, run_id: str) -> NoReturn:
    from pipeline.commands.crash import report_crash

    flush_stdout()
    where = report_crash(exc, run_id)
    print(f"internal error (a bug in Autopack): {exc!r}\n  crash report: {where}", file=sys.stderr)
    raise SystemExit(EXIT_INTERNAL) from None


def _stdout_gone() -> bool:
    """stdout is a pipe whose reader has closed it (so the BrokenPipeError was ours)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _fd, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True  # no way to tell: a broken pipe at the top is most likely stdout's


def _silence_stdout() -> None:
    """Send what is left of stdout (also Python's flush at exit) to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


def flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    except (AttributeError, OSError, ValueError):
        pass
