"""Named crash points for crash-recovery tests.

`AUTOPACK_FAILPOINT=<name>` makes the process die at that point exactly as a kill -9
would (no cleanup, no flush): the tests prove a rerun converges. Off unless set.
"""

from __future__ import annotations

import os


def hit(name: str) -> None:
    if os.environ.get("AUTOPACK_FAILPOINT") == name:
        os._exit(137)
