"""Named crash points for crash-recovery tests.

`AUTOPACK_FAILPOINT=<name>` makes the process die at that point exactly as a kill -9
would (no cleanup, no flush): the tests prove a rerun converges. `<name>@<n>` dies at
the n-th time the point is reached in this process (1 is the first), so a test can
stop a run at any one of many record writes. Off unless set.

The points, in the order a phase reaches them: `before_agent`, `after_agent`,
`gate_entered`, `collection_running` (the gate's test collection, base or candidate,
about to start), `after_gate`, `ci_entered`, `after_ci`, `after_snapshot_commit`,
`after_tag`, `after_complete`; anywhere: `atomic_write` (a temp file written, not yet
renamed) and `event_appended` (an event written, run.json not yet); `chained_start`
(a run finished, the run chained after it not yet started); `promote_merged` (the merge
made, not yet recorded); `worker_applied` (the git worker applied a request, not yet
answered it; `worker_applied:<op>` for one kind of request); the test-change review's
`after_test_changes_approved`, `after_tampering_review_recorded` and
`promote_record_aside`.
"""

from __future__ import annotations

import os

_hits: dict[str, int] = {}


def hit(name: str) -> None:
    wanted = os.environ.get("AUTOPACK_FAILPOINT")
    if not wanted:
        return
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if not nth or (nth.isdigit() and _hits[name] == int(nth)):
        os._exit(137)
