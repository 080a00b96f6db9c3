"""What every doit task factory shares: the common options, the workspace, the task shape."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.commands.handler import handled

if TYPE_CHECKING:
    from pipeline.config.workspace import Workspace


RUN_PARAM = {"name": "run", "long": "run", "type": str, "default": "", "help": "run id"}


PHASE_PARAM = {"name": "phase", "long": "phase", "type": str, "default": "", "help": "phase id"}


JSON_PARAM = {"name": "as_json", "long": "json", "type": bool, "default": False, "help": "machine-readable output"}


def workspace_root() -> Path:
    return Path.cwd()


def loaded_workspace() -> Workspace:
    """The workspace with its configuration, loaded once for this task and passed down."""
    from pipeline.config.workspace import Workspace

    return Workspace(Path.cwd())


def need(value: str, option: str, example: str) -> str:
    if not value:
        from pipeline.core.errors import InvalidInput

        raise InvalidInput(f"missing --{option}", f"pass it, e.g. `{example}`")
    return value


def make_task(doc: str, action: Any, *params: dict[str, Any]) -> dict[str, Any]:
    return {
        "doc": doc,
        "actions": [handled(action)],
        "params": list(params),
        "uptodate": [False],
        "verbosity": 2,
    }


