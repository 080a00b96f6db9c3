"""The console entry and the single top-level error handler.

`python -m pipeline <task> ...` runs the same doit tasks as `doit <task>` in a workspace
with dodo.py, from any directory. `RunCommand` lets `doit run --run R` reach the `run` task
instead of doit's own `run` command.

Exit codes (docs/architecture.md, Exit codes): 0 ok, 1 a failed step, 2 invalid input (an unknown task or option
included: doit's own 3 for a bad command line becomes 2), 3 an internal bug. A reader that
goes away (`python -m pipeline status --json | head -1`) ends the output quietly, exit 0.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from doit.cmd_run import Run

from pipeline.commands.handler import crash, flush_stdout
from pipeline.core.errors import EXIT_INVALID, AutopackError, InvalidInput

# doit's return code for a command line it cannot use (unknown task, bad option, ...).
_DOIT_BAD_COMMAND_LINE = 3


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
                crash(exc, "")

    Guarded.__name__ = Guarded.__qualname__ = cmd_cls.__name__
    return Guarded


def bin_name(argv0: str) -> str:
    """How the user called us, for doit's help and hints."""
    name = Path(argv0).name
    return "python -m pipeline" if name in ("__main__.py", "-m", "") else name


def value_options(module: ModuleType) -> frozenset[str]:
    """Every `--long` option of the module's tasks that takes a value (all but flags),
    read from the tasks' own params, so a new option is protected without a list here."""
    found: set[str] = set()
    for name in dir(module):
        factory = getattr(module, name)
        if not name.startswith("task_") or not callable(factory):
            continue
        task = factory()
        for param in task.get("params", []) if isinstance(task, dict) else []:
            if param.get("type") is not bool and param.get("long"):
                found.add(f"--{param['long']}")
    return frozenset(found)


def check_args(args: Sequence[str], options: frozenset[str]) -> None:
    """Refuse an empty word on the command line (doit fails on one with an IndexError)."""
    for i, arg in enumerate(args):
        if arg:
            continue
        before = args[i - 1] if i else ""
        if before in options:
            raise InvalidInput(
                f"command line: {before} is empty", f"pass a value, e.g. `{before} VALUE`, or leave {before} out"
            )
        raise InvalidInput(f"command line: word {i + 1} is an empty string", "remove the empty argument ('')")


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

    import pipeline.commands.tasks as tasks_module

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
            values = {i for i, arg in enumerate(cmd_args[1:], 1) if cmd_args[i - 1] in options}
            kept = [arg for i, arg in enumerate(cmd_args) if i in values]
            rest = super().process_args([arg for i, arg in enumerate(cmd_args) if i not in values])
            return _merge_back(cmd_args, values, kept, rest)

    args = list(sys.argv[1:] if argv is None else argv)
    options = value_options(tasks_module)
    try:
        check_args(args, options)
    except AutopackError as exc:
        print(exc.render(), file=sys.stderr)
        return int(exc.exit_code)
    code = int(_Main(ModuleTaskLoader(tasks_module), config_filenames=()).run(args) or 0)
    flush_stdout()
    return EXIT_INVALID if code == _DOIT_BAD_COMMAND_LINE else code
