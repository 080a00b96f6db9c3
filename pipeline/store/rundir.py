"""The run directory: `RunStore` names every path of `runs/<run_id>/` (docs/architecture.md,
The run directory); the run id is checked before any path is built from it.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from pipeline.core.errors import InvalidInput
from pipeline.core.jsonio import write_if_missing
from pipeline.models.base import ID_PATTERN
from pipeline.store.events import EventLog, check_id
from pipeline.store.lock import RunLock


class RunStore:
    """The paths of one run directory, `<workspace>/runs/<run_id>/`."""

    def __init__(self, workspace: Path, run_id: str) -> None:
        self.run_id = check_id(run_id, "run id")
        self.workspace = Path(workspace)

    def __repr__(self) -> str:
        return f"RunStore({str(self.workspace)!r}, {self.run_id!r})"

    @property
    def run_dir(self) -> Path:
        return self.workspace / "runs" / self.run_id

    @property
    def plan_path(self) -> Path:
        return self.run_dir / "plan.yaml"

    @property
    def run_json(self) -> Path:
        return self.run_dir / "run.json"

    @property
    def strategy_json(self) -> Path:
        return self.run_dir / "strategy.json"

    @property
    def events_path(self) -> Path:
        return self.run_dir / "events.jsonl"

    @property
    def issue_index_path(self) -> Path:
        return self.run_dir / "run_issue_index.json"

    @property
    def summary_md(self) -> Path:
        return self.run_dir / "RUN_SUMMARY.md"

    @property
    def incident_dir(self) -> Path:
        return self.run_dir / "incident"

    @property
    def tiers_dir(self) -> Path:
        return self.run_dir / "tiers"

    @property
    def lock_path(self) -> Path:
        return self.run_dir / ".lock"

    def phase_dir(self, index: int, phase_id: str) -> Path:
        """`phases/<NN>-<phase_id>`, NN the 1-based position of the phase, 2 digits."""
        if isinstance(index, bool) or not isinstance(index, int) or index < 1:
            raise InvalidInput(
                f"invalid phase index {index!r} for phase {phase_id!r}: must be 1 or more",
                "phase indexes are 1-based positions in the plan",
            )
        check_id(phase_id, "phase id")
        return self.run_dir / "phases" / f"{index:02d}-{phase_id}"

    def _numbered(self, index: int, phase_id: str, sub: str, k: int) -> Path:
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise InvalidInput(f"invalid {sub} number {k!r} for phase {phase_id!r}: must be a whole number")
        return self.phase_dir(index, phase_id) / sub / str(k)

    def attempt_dir(self, index: int, phase_id: str, k: int) -> Path:
        return self._numbered(index, phase_id, "attempts", k)

    def ci_dir(self, index: int, phase_id: str, k: int) -> Path:
        return self._numbered(index, phase_id, "ci", k)

    def audit_dir(self, index: int, phase_id: str, k: int) -> Path:
        return self._numbered(index, phase_id, "audit", k)

    @functools.cached_property
    def events(self) -> EventLog:
        return EventLog(self.events_path)

    def lock(self) -> RunLock:
        # The lock file and atomic-write temp files are machine state, not record: a user
        # committing runs/ for audit history must not pick them up.
        write_if_missing(self.run_dir / ".gitignore", ".lock\n.*.tmp.*\n")
        return RunLock(self.lock_path, self.run_id)

    def exists(self) -> bool:
        """The run directory holds a plan.yaml or a run.json."""
        return self.plan_path.is_file() or self.run_json.is_file()

    @staticmethod
    def list_runs(workspace: Path) -> list[str]:
        """Ids of the runs under `<workspace>/runs/` (directories with plan.yaml or run.json)."""
        runs_dir = Path(workspace) / "runs"
        if not runs_dir.is_dir():
            return []
        found = []
        for entry in runs_dir.iterdir():
            if not entry.is_dir() or re.fullmatch(ID_PATTERN, entry.name) is None:
                continue
            if (entry / "plan.yaml").is_file() or (entry / "run.json").is_file():
                found.append(entry.name)
        return sorted(found)
