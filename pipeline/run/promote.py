"""`doit promote`: merge an eligible run's integration branch into its base.

The only writer of a base branch (docs/architecture.md, Invariants), and only on the run's recorded verdict:
`run.json` must say `promotion_eligible_to_main`, and the terminal event of the
hash-chained log must agree (an edited run.json does not promote).

Where the merge happens (the user's uncommitted work is never touched, docs/architecture.md, Invariants):

- the base is checked out nowhere: in a temporary linked worktree
  `<workspace>/.autopack/promote-<run_id>`, removed afterwards; the base ref advances and
  the user's checkout (on another branch) stays exactly as it was;
- the base is checked out and that checkout is clean: there, so its files follow the ref;
- the base is checked out and that checkout has changes (or untracked files): refused.

The merge is `--no-ff`, so the base gets one merge commit whose message carries the run
id as an `Autopack-Run` trailer. A branch already contained in the base is reported as
merged and nothing is written (promote is idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.core import failpoints
from pipeline.core.errors import GitError, IntegrityError, InvalidInput, StepFailed
from pipeline.models.enums import PhaseState
from pipeline.models.run import RunRecord
from pipeline.run import promote_record
from pipeline.run.context import WORKTREES_DIR
from pipeline.run.recorder import Recorder
from pipeline.store.events import utc_now
from pipeline.store.rundir import RunStore
from pipeline.vcs.adapter import GitAdapter
from pipeline.vcs.remote import make_adapter

PROMOTE_DIR_PREFIX = "promote-"
RUN_TRAILER = "Autopack-Run"

PromoteStatus = Literal["eligible", "merged", "already_merged"]


@dataclass(frozen=True)
class PromoteOutcome:
    """What `promote` (or `--check`) found or did, for the task to print."""

    run_id: str
    into: str
    status: PromoteStatus
    commit: str | None
    message: str


# -- the verdict -------------------------------------------------------------------------


def _open(workspace: Path, run_id: str) -> Recorder:
    store = RunStore(workspace, run_id)
    if not store.run_json.exists():
        raise InvalidInput(
            f"run {run_id} is not started ({store.run_json} does not exist)",
            f"check the run id (`doit status` lists runs), or start it with `doit start_run --run {run_id}`",
        )
    return Recorder.open(store)  # verifies the event chain against run.json


def _refusal_reasons(run: RunRecord) -> list[str]:
    if not run.state.terminal:
        return [f"run is {run.state.value}: it has not reached a terminal state"]
    if run.promotion_eligible_to_main:
        return []
    return list(run.promotion_reasons) or [f"run ended {run.state.value}"]


def _check_log_agrees(rec: Recorder) -> None:
    """The terminal event must carry the same verdict as run.json."""
    run = rec.run
    terminal = [e for e in rec.store.events.read() if e.kind == "run" and e.to_state == run.state.value]
    if not terminal or terminal[-1].data.get("promotion_eligible") is not True:
        raise IntegrityError(
            f"run {run.run_id}: run.json says eligible for promotion but the terminal event in "
            f"{rec.store.events_path} does not",
            f"run.json was edited; restore {rec.store.run_json} from git (`doit validate --run {run.run_id}`)",
        )


def verdict(workspace: Path, run_id: str) -> tuple[Recorder, list[str]]:
    """The run's recorder and why it may not be promoted (empty: eligible)."""
    rec = _open(workspace, run_id)
    reasons = _refusal_reasons(rec.run)
    if not reasons:
        _check_log_agrees(rec)
        reasons = _chain_reasons(workspace, rec.run)
    return rec, reasons


def _chain(workspace: Path, run: RunRecord) -> list[RunRecord]:
    """The runs `run` continues, nearest first (a chained run's branch stacks on theirs)."""
    from pipeline.core.jsonio import read_model

    found: list[RunRecord] = []
    parent = run.chained_from
    while parent is not None and len(found) < 100:
        path = RunStore(workspace, parent).run_json
        if not path.exists():
            break
        found.append(read_model(path, RunRecord))
        parent = found[-1].chained_from
    return found


def _chain_reasons(workspace: Path, run: RunRecord) -> list[str]:
    """A chained run's merge brings every earlier run of the chain with it: each must be eligible."""
    return [
        f"run {r.run_id} before it in the chain is not eligible ({'; '.join(r.promotion_reasons)})"
        for r in _chain(workspace, run)
        if not r.promotion_eligible_to_main
    ]


def default_target(workspace: Path, run: RunRecord) -> str:
    """Where a run is promoted by default: its base, or for a chained run the base of the
    first run of its chain (its own base is the previous run's integration branch)."""
    chain = _chain(workspace, run)
    return chain[-1].base_ref if chain else run.base_ref


def _refuse(run_id: str, reasons: list[str]) -> StepFailed:
    return StepFailed(
        f"run {run_id} is not eligible for promotion: " + "; ".join(reasons),
        "only a DONE_SUCCESS run with every tier clean and no budget failure is promoted; "
        "read its RUN_SUMMARY.md, fix the cause and run the work again in a new run",
    )


def check_promotion(workspace: Path, run_id: str, into: str | None = None) -> PromoteOutcome:
    """`--check`: the recorded verdict only (for CI). StepFailed (exit 1) when not eligible."""
    rec, reasons = verdict(workspace, run_id)
    if reasons:
        raise _refuse(run_id, reasons)
    target = into or default_target(workspace, rec.run)
    why = "; ".join(rec.run.promotion_reasons)
    message = f"run {run_id} is eligible for promotion to {target}: {why}"
    return PromoteOutcome(run_id, target, "eligible", None, message)


# -- merging -----------------------------------------------------------------------------


def _merge_message(run: RunRecord, into: str) -> str:
    accepted = [p for p in run.phases if p.state == PhaseState.COMPLETE]
    lines = [
        f"Promote run {run.run_id} into {into}",
        "",
        f"Merge {run.branch} ({len(accepted)} accepted phase(s), started from {run.base_commit[:12]}).",
        *(f"- {p.phase_id}: {p.name} ({p.tag or 'untagged'})" for p in accepted),
        "",
        f"{RUN_TRAILER}: {run.run_id}",
    ]
    return "\n".join(lines) + "\n"


def _promote_worktree(workspace: Path, run_id: str) -> Path:
    return (workspace / WORKTREES_DIR.parent / f"{PROMOTE_DIR_PREFIX}{run_id}").resolve()


def _merge_in_temp_worktree(git: GitAdapter, path: Path, into: str, branch: str, message: str) -> str:
    """Merge where nobody works: a linked worktree on `into`, removed whatever happens."""
    git.ensure_worktree(into, into, path)
    try:
        return git.merge_no_ff(into, branch, message, path)
    finally:
        git.remove_worktree(path)


def _drop_stale_promote_worktree(git: GitAdapter, path: Path) -> None:
    """A promote killed mid-way leaves its temporary worktree holding the base branch."""
    if any(e.path == path for e in git.worktrees()):
        git.remove_worktree(path)


def _live_record_hint(holder: Path, run: RunRecord) -> str:
    """When the workspace is its own target, the run's live record is untracked in the
    checkout and the branch carries it too: git would refuse to overwrite it."""
    if (holder / "runs" / run.run_id).is_dir():
        return f"; among them may be the run's live record runs/{run.run_id}/, which the branch also carries"
    return ""


def _merge(git: GitAdapter, workspace: Path, run: RunRecord, into: str, tip: str) -> tuple[str, str]:
    """(merge commit, where it was made)."""
    message = _merge_message(run, into)
    holder = git.checked_out_in(into)
    if holder is None:
        temp = _promote_worktree(workspace, run.run_id)
        return _merge_in_temp_worktree(git, temp, into, run.branch, message), "a temporary worktree"
    aside = promote_record.set_aside(git, workspace, holder, run, tip) if git.is_dirty(holder) else None
    if aside is not None:
        try:
            commit = git.merge_no_ff(into, run.branch, message, holder)
        except BaseException:
            promote_record.restore_aside(workspace, run.run_id)
            raise
        promote_record.drop_aside(aside)
        return commit, f"{holder}, its live record runs/{run.run_id}/ now tracked"
    if git.is_dirty(holder):
        raise StepFailed(
            f"refusing to promote run {run.run_id}: '{into}' is checked out in {holder}, which has "
            "uncommitted changes or untracked files (they are never touched)" + _live_record_hint(holder, run),
            f"commit, stash or remove them in {holder}, or check out another branch there so the "
            "merge happens in a temporary worktree; then rerun promote",
        )
    return git.merge_no_ff(into, run.branch, message, holder), str(holder)


def _require_refs(git: GitAdapter, run: RunRecord, into: str) -> str:
    if not git.branch_exists(into):
        raise InvalidInput(
            f"branch '{into}' does not exist in {run.target_repo}",
            f"pass an existing branch with --into (the run's base is '{run.base_ref}')",
        )
    tip = git.resolve(f"refs/heads/{run.branch}")
    if tip is None:
        raise GitError(
            f"the run's branch '{run.branch}' does not exist in {run.target_repo}",
            "it was deleted or this is another clone; fetch it, then rerun promote",
        )
    return tip


def _already_merged(rec: Recorder, git: GitAdapter, into: str) -> PromoteOutcome:
    run = rec.run
    commit = run.promoted_commit
    if commit is None:
        # A promote killed between the merge and its record, or a merge made by hand.
        commit = git.find_commit_with_trailer(f"refs/heads/{into}", RUN_TRAILER, run.run_id)
        if commit is not None:
            _record(rec, commit, into, "found already merged")
    return PromoteOutcome(
        run.run_id,
        into,
        "already_merged",
        commit,
        f"run {run.run_id}: {run.branch} is already merged into {into}" + (f" ({commit[:12]})" if commit else ""),
    )


def _record(rec: Recorder, commit: str | None, into: str, where: str) -> None:
    rec.run = rec.run.model_copy(update={"promoted_commit": commit, "promoted_at": utc_now()})
    rec.note(rec.run.run_id, "promoted", commit=commit, into=into, where=where)


def promote(workspace: Path, run_id: str, into: str | None = None) -> PromoteOutcome:
    """Merge the run's branch into `into` (default: its base) when the verdict allows."""
    store = RunStore(workspace, run_id)
    promote_record.restore_aside(Path(workspace), run_id)  # a promote killed mid-way
    if not store.run_json.exists():
        _open(workspace, run_id)  # raises the "not started" error
    with store.lock():
        rec, reasons = verdict(workspace, run_id)
        if reasons:
            raise _refuse(run_id, reasons)
        run = rec.run
        target = into or default_target(workspace, run)
        git = make_adapter(Path(run.target_repo))
        git.check_available()
        tip = _require_refs(git, run, target)
        _drop_stale_promote_worktree(git, _promote_worktree(Path(workspace), run_id))
        if git.is_ancestor(tip, f"refs/heads/{target}"):
            return _already_merged(rec, git, target)
        commit, where = _merge(git, Path(workspace), run, target, tip)
        failpoints.hit("promote_merged")
        _record(rec, commit, target, where)
        return PromoteOutcome(
            run_id,
            target,
            "merged",
            commit,
            f"promoted run {run_id}: merged {run.branch} into {target} at {commit[:12]} (in {where})",
        )
