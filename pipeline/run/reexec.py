"""Without the sandbox, the supervisor keeps no secret it does not need (layer L5).

An unsandboxed agent runs as the same user and can read `/proc/<pid>/environ` of the
supervisor and of its parents. Dropping a name from `os.environ` does not help: that file
shows the environment the process was started with. So before the first untrusted step
the supervisor starts itself again (`execve`, same pid, same command line) with only the
names it needs: the base allowlist, locale, `GIT_*`, `AUTOPACK_*`, `PYTHON*`, doit's own,
and the names the agent presets declare (an agent's API key must still reach it).
The processes that started the supervisor are not changed: start it from a shell that
holds no more secrets than the agents may see, or use the sandbox.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipeline.config.workspace import Workspace
from pipeline.core import proc, sandbox

MARK = "AUTOPACK_REEXECED"
_KEPT_PREFIXES = ("LC_*", "GIT_*", "AUTOPACK_*", "PYTHON*", "DOIT_*", "XDG_*", "VIRTUAL_ENV*")


def kept_env(needed: Iterable[str], source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The supervisor's environment minus every name it does not need."""
    return proc.scrubbed_env((*proc.BASE_ENV_ALLOW, *_KEPT_PREFIXES, *needed), source=source)


def withheld(needed: Iterable[str], source: Mapping[str, str] | None = None) -> list[str]:
    src = os.environ if source is None else source
    kept = kept_env(needed, src)
    return sorted(name for name in src if name not in kept)


def drop_secrets(ws: Workspace) -> None:
    """Re-exec without the unneeded names when steps will run unsandboxed; a no-op with the
    sandbox, after a re-exec, or when nothing would be dropped."""
    if os.environ.get(MARK) or not _our_command_line():
        return
    level, _why = sandbox.decide(False)
    if level == sandbox.ISOLATION_BWRAP:
        return
    needed = _preset_names(ws)
    if not withheld(needed):
        return
    env = {**kept_env(needed), MARK: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def _our_command_line() -> bool:
    """This process is `python -m pipeline ...` or `doit ...`: re-running its command
    line runs the same task again (never a host that called a task in-process)."""
    argv0 = Path(sys.argv[0]) if sys.argv else Path()
    ours = argv0.name == "doit" or (argv0.name == "__main__.py" and argv0.parent.name == "pipeline")
    return ours and bool(sys.orig_argv)


def _preset_names(ws: Workspace) -> list[str]:
    try:
        presets = ws.agent_presets
    except Exception:  # a bad presets file is reported by the run itself
        return []
    return sorted({name for preset in presets.values() for name in preset.env})
