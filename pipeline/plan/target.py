"""Where a run's target repository is, seen from the workspace a task runs in."""

from __future__ import annotations

from pathlib import Path

from pipeline.store.rundir import RunStore

# The frozen plan's `target.repo` ("." when it names none), by the plan file's bytes: a
# step parses the plan's YAML once per process, not once per phase.
_TARGET_REPOS: dict[bytes, str] = {}


def target_repo(workspace: Path, repo: str) -> Path:
    path = Path(repo)
    return (path if path.is_absolute() else workspace / path).resolve()


def current_target(workspace: Path, store: RunStore, recorded: Path) -> Path:
    """The run's target repository, seen from this workspace.

    run.json holds the absolute path start_run resolved on its machine; a CI job's fresh
    clone (or a moved checkout) is somewhere else, so the frozen plan's `target.repo` is
    resolved again against this workspace ("." by default: the workspace itself).
    """
    import hashlib

    from pipeline.core.errors import AutopackError
    from pipeline.core.yamlio import load_fast

    try:
        key = hashlib.sha256(store.plan_path.read_bytes()).digest()
    except OSError:
        return recorded  # the frozen-plan check names the problem
    repo = _TARGET_REPOS.get(key)
    if repo is None:
        try:
            plan = load_fast(store.plan_path)
        except (AutopackError, OSError):
            return recorded
        target = plan.get("target") if isinstance(plan, dict) else None
        named = target.get("repo") if isinstance(target, dict) else None
        repo = named if isinstance(named, str) and named else "."
        if len(_TARGET_REPOS) > 256:
            _TARGET_REPOS.clear()
        _TARGET_REPOS[key] = repo
    return target_repo(workspace, repo)


