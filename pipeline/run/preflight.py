"""What `start_run` needs of the target repository, checked by `validate` first (layer L5).

A plan can be valid on its own and still unusable: its target repository missing or not a
git repository, its base branch missing, a `base` that git would read as an option, or
the run's branch or phase tags already there from an earlier run of the same id (found
before, they surfaced only after a phase was built, tested and committed). `validate`
and `start_run` ask the same function, so `start_run` finds nothing `validate` missed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import AutopackError
from pipeline.models.plan import Plan
from pipeline.store.rundir import RunStore

if TYPE_CHECKING:  # git loads only when a target is checked
    from pipeline.vcs.adapter import GitAdapter


def target_problems(workspace: Path, store: RunStore, plan: Plan) -> list[str]:
    """Each problem as one line naming the plan and the field; [] when the run can start."""
    from pipeline.plan.target import target_repo
    from pipeline.vcs.remote import make_adapter

    where = f"{store.plan_path}: target"
    base = plan.target.base
    if base is not None and (base.startswith("-") or not base.strip()):
        return [f"{where}.base {base!r} is not a branch name (git would read it as an option); name a branch"]
    target = target_repo(workspace, plan.target.repo)
    if not target.is_dir():
        return [f"{where}.repo {plan.target.repo!r}: {target} does not exist; point target.repo at a git repository"]
    git = make_adapter(target)
    git.check_available()  # no git (or no git worker) is the environment's problem, not the plan's
    try:
        git.toplevel()
    except AutopackError as exc:
        return [f"{where}.repo {plan.target.repo!r}: {target} is not a usable git repository ({exc.message})"]
    problems: list[str] = []
    branch = f"autonomous/{plan.run_id}"
    try:
        base_commit = _base_commit(git, base)
    except AutopackError as exc:
        return [f"{where}.base: {exc.message}"]
    if base is not None and base_commit is None and not _made_by_the_run_before(plan, base):
        problems.append(f"{where}.base {base!r}: no such branch or commit in {target}; name an existing branch")
    tip = git.resolve(f"refs/heads/{branch}")
    if tip is not None and tip != base_commit:
        problems.append(
            f"{where}: branch {branch} already exists in {target} with commits of its own; "
            f"delete it (`git branch -D {branch}`) or choose another run id"
        )
    refs = git.refs_state().refs  # one read for every phase's tag (from git's files where it can)
    for _, phase in plan.phases():
        tag = f"{branch}/{phase.phase_id}"
        if f"refs/tags/{tag}" in refs:
            problems.append(f"{where}: tag {tag} already exists in {target}; delete it or choose another run id")
    return problems


def _base_commit(git: GitAdapter, base: str | None) -> str | None:
    name = base if base is not None else git.current_branch()
    return git.resolve(name)


def _made_by_the_run_before(plan: Plan, base: str) -> bool:
    """A chained run's base is the branch of the run it continues, made when that one starts."""
    return plan.chained_from is not None and base == f"autonomous/{plan.chained_from}"
