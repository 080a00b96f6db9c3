"""`doit inspect --run R`: write the run's inspector page (pipeline.reporting.inspect)."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import InvalidInput
from pipeline.reporting.inspect.page import write_inspect
from pipeline.store.rundir import RunStore


def inspect_run(workspace: Path, run_id: str) -> str:
    """Write runs/<run_id>/inspect.html; the line to print."""
    store = RunStore(workspace, run_id)
    if not store.run_dir.is_dir():
        raise InvalidInput(f"no run {run_id!r}: {store.run_dir} does not exist", "`doit status` lists the runs")
    path = write_inspect(store.run_dir)
    shown = path.relative_to(workspace) if path.is_relative_to(workspace) else path
    return f"wrote {shown} ({path.stat().st_size / 1024:.0f} KB); open it in a browser (it works offline)"
