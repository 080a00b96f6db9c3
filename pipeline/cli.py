"""The console entry and the single top-level error handler (layer L6).

`python -m pipeline <task> ...` runs the same doit tasks as `doit <task>` in a workspace
with dodo.py, from any directory. `RunCommand` lets `doit run --run R` reach the `run` task
instead of doit's own `run` command.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

from doit.cmd_run import Run

from pipeline.errors import EXIT_INTERNAL, AutopackError


def handled(action: Callable[..., None]) -> Callable[..., None]:
    """Map AutopackError to its one-line message + fix and exit code; a bug exits 3."""

    @functools.wraps(action)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            action(*args, **kwargs)
        except AutopackError as exc:
            sys.stdout.flush()
            print(exc.render(), file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            from pipeline.crash import report_crash

            where = report_crash(exc, kwargs.get("run") or "")
            print(f"internal error (a bug in Autopack): {exc!r}\n  crash report: {where}", file=sys.stderr)
            raise SystemExit(EXIT_INTERNAL) from None

    return wrapper


RUN_TASK = "run_all"


def _is_run_task_call(args: Sequence[str]) -> bool:
    return bool(args) and (args[0] == "--run" or args[0].startswith("--run="))


class RunCommand(Run):  # type: ignore[misc]
    """doit's `run` command, except that `run --run R` means the `run_all` task."""

    def parse_execute(self, in_args: list[str]) -> int:
        if _is_run_task_call(in_args):
            in_args = [RUN_TASK, *in_args]
        return int(super().parse_execute(in_args))


def main(argv: Sequence[str] | None = None) -> int:
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    import pipeline.tasks as tasks_module

    class _Main(DoitMain):  # type: ignore[misc]
        def get_cmds(self) -> Any:
            cmds = super().get_cmds()
            cmds["run"] = RunCommand
            return cmds

    args = list(sys.argv[1:] if argv is None else argv)
    return int(_Main(ModuleTaskLoader(tasks_module), config_filenames=()).run(args))
