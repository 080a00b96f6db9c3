"""Crash reports for internal errors (exit 3): written, never lost."""

from __future__ import annotations

import re
import traceback
from pathlib import Path

from pipeline.core.jsonio import write_text_atomic
from pipeline.models.base import ID_PATTERN
from pipeline.store.events import utc_now


def report_crash(exc: BaseException, run_id: str) -> Path:
    """Write the traceback into the run's incident/ folder (or .autopack/crashes/)."""
    stamp = utc_now().replace(":", "")
    if run_id and re.fullmatch(ID_PATTERN, run_id) and (Path("runs") / run_id).is_dir():
        folder = Path("runs") / run_id / "incident"
    else:
        folder = Path(".autopack") / "crashes"
    path = folder / f"crash-{stamp}.txt"
    text = "".join(traceback.format_exception(exc))
    write_text_atomic(path, f"Autopack internal error at {stamp}\n\n{text}")
    return path.resolve()
