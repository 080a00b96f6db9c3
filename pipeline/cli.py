"""The console entry and the single top-level error handler (layer L6).

`python -m pipeline <task> ...` runs the same doit tasks as `doit <task>` in a workspace
with dodo.py, from any directory. `RunCommand` lets `doit run --run R` reach the `run` task
instead of doit's own `run` command.

Exit codes (DESIGN §10): 0 ok, 1 a failed step, 2 invalid input (an unknown task or option
included: doit's own 3 for a bad command line becomes 2), 3 an internal bug. A reader that
goes away (`python -m pipeline status --json | head -1`) ends the output quietly, exit 0.
"""

from __future__ import annotations

import functools
import os
import select
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from doit.cmd_run import Run

from pipeline.errors import EXIT_INTERNAL, EXIT_INVALID, AutopackError

# doit's return code for a command line it cannot use (unknown task, bad option, ...).
_DOIT_BAD_COMMAND_LINE = 3


def handled(action: Callable[..., None]) -> Callable[..., None]:
    """Map AutopackError to its one-line message + fix and exit code; a bug exits 3."""

    @functools.wraps(action)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            action(*args, **kwargs)
            sys.stdout.flush()  # a reader that went away shows here, not at exit
        except BrokenPipeError as exc:
            if not _stdout_gone():
                _crash(exc, kwargs.get("run") or "")
            _silence_stdout()
            raise SystemExit(0) from None
        except AutopackError as exc:
            _flush_stdout()
            print(exc.render(), file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            _crash(exc, kwargs.get("run") or "")

    return wrapper


def _crash(exc: BaseException, run_id: str) -> NoReturn:
    from pipeline.crash import report_crash

    _flush_stdout()
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


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    except (AttributeError, OSError, ValueError):
        pass


RUN_TASK = "run_all"


def _is_run_task_call(args: Sequence[str]) -> bool:
    return bool(args) and (args[0] == "--run" or args[0].startswith("--run="))


class RunCommand(Run):  # type: ignore[misc]
    """doit's `run` command, except that `run --run R` means the `run_all` task."""

    def parse_execute(self, in_args: list[str]) -> int:
        if _is_run_task_call(in_args):
            in_args = [RUN_TASK, *in_args]
        return int(super().parse_execute(in_args))


def _guarded(cmd_cls: type[Any]) -> type[Any]:
    """`cmd_cls` whose unexpected errors are internal errors (crash report, exit 3).

    doit answers those with a traceback and 3, its code for a bad command line too; with
    them handled here, a 3 from doit always means a bad command line (exit 2).
    """
    from doit.cmdparse import CmdParseError
    from doit.exceptions import InvalidCommand, InvalidDodoFile, InvalidTask

    usage_errors = (CmdParseError, InvalidDodoFile, InvalidCommand, InvalidTask)

    class Guarded(cmd_cls):  # type: ignore[misc]
        def parse_execute(self, in_args: list[str]) -> Any:
            try:
                return super().parse_execute(in_args)
            except usage_errors:
                raise
            except Exception as exc:
                _crash(exc, "")

    Guarded.__name__ = Guarded.__qualname__ = cmd_cls.__name__
    return Guarded


def bin_name(argv0: str) -> str:
    """How the user called us, for doit's help and hints."""
    name = Path(argv0).name
    return "python -m pipeline" if name in ("__main__.py", "-m", "") else name


_VALUE_OPTIONS = ("--query", "--description", "--features", "--template", "--phase", "--run", "--patch", "--result")


def _takes_value(arg: str) -> bool:
    return arg in _VALUE_OPTIONS


def _merge_back(original: list[str], values: set[int], kept: list[str], rest: list[str]) -> list[str]:
    """doit's processed words (`rest`: the input minus `name=value` variables, in order)
    with the protected option values put back in their places."""
    rest_iter, kept_iter = iter(rest), iter(kept)
    out = []
    for i, arg in enumerate(original):
        if i in values:
            out.append(next(kept_iter))
        elif not ("=" in arg and not arg.startswith("-")):
            out.append(next(rest_iter))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    import pipeline.tasks as tasks_module

    class _Main(DoitMain):  # type: ignore[misc]
        BIN_NAME = bin_name(sys.argv[0] if sys.argv else "")

        def get_cmds(self) -> Any:
            cmds = super().get_cmds()
            cmds["run"] = RunCommand
            for name in list(cmds):
                cmds[name] = _guarded(cmds.get_plugin(name))
            return cmds

        def process_args(self, cmd_args: list[str]) -> list[str]:
            # doit reads any word with "=" as one of its `name=value` variables, which
            # swallows `--query "... WHERE a = 1"`: the value of an option stays a value.
            values = {i for i, arg in enumerate(cmd_args[1:], 1) if _takes_value(cmd_args[i - 1])}
            kept = [arg for i, arg in enumerate(cmd_args) if i in values]
            rest = super().process_args([arg for i, arg in enumerate(cmd_args) if i not in values])
            return _merge_back(cmd_args, values, kept, rest)

    args = list(sys.argv[1:] if argv is None else argv)
    code = int(_Main(ModuleTaskLoader(tasks_module), config_filenames=()).run(args) or 0)
    _flush_stdout()
    return EXIT_INVALID if code == _DOIT_BAD_COMMAND_LINE else code
