"""start_run: freeze the plan, compile the strategy, create branch + worktree."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config.workspace import Workspace
from pipeline.core.errors import InvalidInput, ValidationErrors
from pipeline.core.jsonio import write_model
from pipeline.issues import backlog
from pipeline.issues.debt import DebtPlan, append_debt_tier, plan_debt_phases
from pipeline.models.enums import RunState, Severity
from pipeline.models.issues import PhaseIssueFile, ProjectBacklog, RunIssueIndex
from pipeline.models.plan import Plan
from pipeline.models.ruleset import Ruleset
from pipeline.models.run import PhaseRecord, RunRecord
from pipeline.models.strategy import Strategy
from pipeline.plan import file as planfile
from pipeline.plan.chaining import next_in_chain, split_plan
from pipeline.policy.strategy import agent_spec, compile_strategy
from pipeline.run.recorder import Recorder, initial_summaries
from pipeline.store import chain
from pipeline.store.events import utc_now
from pipeline.store.rundir import RunStore

if TYPE_CHECKING:  # git and the run context load only for start_run, not for `doit validate`
    from pipeline.vcs.adapter import GitAdapter


def load_valid_plan(ws: Workspace, store: RunStore) -> Plan:
    if not store.plan_path.exists():
        raise InvalidInput(
            f"{store.plan_path} does not exist",
            f"create it with `doit new_run --run {store.run_id}`",
        )
    loaded = ws.ruleset
    categories = {*loaded.ruleset.categories, *loaded.ruleset.aliases}
    plan, _ = planfile.load_plan(store.plan_path, categories)
    return plan


def compile_for(
    ws: Workspace,
    store: RunStore,
    plan: Plan,
    aged_issue_keys: Mapping[str, Severity] | None = None,
    aged_paths: Mapping[str, list[str]] | None = None,
) -> Strategy:
    loaded = ws.ruleset
    return compile_strategy(
        plan,
        loaded.ruleset,
        plan_sha256=planfile.plan_sha256(store.plan_path),
        ruleset_sha256=loaded.sha256,
        ci_profiles=ws.ci_profiles(plan.ci),
        overridden=loaded.overridden,
        aged_issue_keys=aged_issue_keys,
        aged_paths=aged_paths,
    )


def _aged_paths(aging: Aging) -> dict[str, list[str]]:
    """The repository paths each aged issue's evidence points at (`src/x.py:12` -> `src/x.py`,
    a test node id -> its file); evidence inside run records is left out."""
    if aging.backlog is None:
        return {}
    out: dict[str, list[str]] = {}
    for key in aging.aged:
        entry = aging.backlog.issues_by_key.get(key)
        refs = entry.evidence_refs if entry is not None else []
        paths = {ref.split("::")[0].split(":")[0] for ref in refs if not ref.startswith("runs/")}
        out[key] = sorted(p for p in paths if p)
    return out


def check_reuse_catalogued(ws: Workspace, store: RunStore, plan: Plan) -> None:
    """Every reuse source must be one the workspace's curated catalog lists."""
    if not any(phase.reuse is not None and phase.reuse.source is not None for _, phase in plan.phases()):
        return
    from pipeline.policy.strategy import uncatalogued_sources

    problems = uncatalogued_sources(plan, ws.catalog.catalog)
    if problems:
        raise InvalidInput(
            f"{store.plan_path}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            "review the source (`doit catalog_scan`) and add it to catalog/features.yaml, or make the phase greenfield",
        )


def check_agents(ws: Workspace, plan: Plan) -> None:
    """Every phase's builder and auditor resolve (known preset, a command where needed),
    so a typo fails at start, not in the middle of an unattended run."""
    from pipeline.agents.runner import resolve_agent

    presets = ws.agent_presets
    problems = []
    for _tier, phase in plan.phases():
        for role, ref in (
            ("builder", phase.builder or plan.agents.builder),
            ("auditor", phase.auditor or plan.agents.auditor),
        ):
            spec = agent_spec(ref)
            if spec is None:
                continue
            try:
                resolve_agent(spec, presets)
            except InvalidInput as exc:
                problems.append(f"phase {phase.phase_id} {role}: {exc.message} ({exc.fix})")
    if problems:
        raise ValidationErrors(problems, "fix the agents in the plan (or profiles/agents.yaml)")


@dataclass(frozen=True)
class Aging:
    """What the project backlog means for this run (docs/architecture.md, Issues)."""

    thresholds: tuple[int, int]
    aged: dict[str, Severity] = field(default_factory=dict)
    backlog: ProjectBacklog | None = None
    debt: DebtPlan = field(default_factory=DebtPlan)


def _aging(ws: Workspace, run_id: str, plan: Plan, ruleset: Ruleset) -> Aging:
    """Aged keys under this plan's safety profile; the backlog is derived only when another
    run recorded an issue, so a project's first runs start without DuckDB."""
    profile = ruleset.safety_profiles[plan.safety_profile]
    thresholds = (profile.aging_runs, profile.aging_tiers)
    if not backlog.other_runs_have_issues(ws.root, run_id):
        runs = sum(1 for p in (ws.root / "runs").glob("*/run.json") if p.parent.name != run_id)
        backlog.write_backlog(ws.root, ProjectBacklog(project_id=plan.project_id, runs_read=runs))
        return Aging(thresholds)
    derived = backlog.derive_backlog(ws, profile=plan.safety_profile)
    derived = derived.model_copy(update={"project_id": plan.project_id})
    backlog.write_backlog(ws.root, derived)  # playbook §5.3: the backlog as this run saw it
    return Aging(thresholds, backlog.needs_cleanup_keys(derived), derived)


def _add_debt_phases(workspace: Path, store: RunStore, plan: Plan, ruleset: Ruleset, aging: Aging) -> Aging:
    """With `debt_cleanup: auto`, the aged keys become the tier DEBT of the plan file
    (before it is frozen)."""
    if ruleset.debt_cleanup != "auto" or not aging.aged or aging.backlog is None:
        return aging
    max_phases = min(ruleset.run_budgets.max_phases, plan.budgets.max_phases or ruleset.run_budgets.max_phases)
    from pipeline.plan.target import target_repo

    debt = plan_debt_phases(
        workspace,
        target_repo(workspace, plan.target.repo),
        plan,
        aging.backlog,
        aging.aged,
        thresholds=aging.thresholds,
        max_phases=max_phases,
    )
    append_debt_tier(store.plan_path, debt.phases)
    return Aging(aging.thresholds, aging.aged, aging.backlog, debt)


def _note_aging(rec: Recorder, run_id: str, aging: Aging) -> None:
    if not aging.aged:
        return
    rec.note(
        run_id,
        "backlog_aging",
        aged_issue_keys=sorted(aging.aged),
        aging_runs=aging.thresholds[0],
        aging_tiers=aging.thresholds[1],
        debt_phases={p.phase_id: list(p.cleans) for p in aging.debt.phases},
        debt_deferred=list(aging.debt.deferred),
        debt_note=aging.debt.skipped_reason,
    )


def start_run(workspace: Path | Workspace, run_id: str) -> RunRecord:
    from pipeline.plan.target import target_repo
    from pipeline.run.context import branch_name, record_lives_in_branch, worktree_path
    from pipeline.run.preflight import target_problems
    from pipeline.vcs.remote import make_adapter

    ws = Workspace.of(workspace)
    workspace = ws.root
    store = RunStore(workspace, run_id)
    with store.lock():
        if store.run_json.exists():
            raise InvalidInput(
                f"run {run_id} is already started ({store.run_json} exists)",
                f"drive it with `doit run --run {run_id}`, or start a new run id",
            )
        _refuse_damaged_log(store)
        plan = load_valid_plan(ws, store)
        check_agents(ws, plan)
        check_reuse_catalogued(ws, store, plan)
        problems = target_problems(ws.root, store, plan)
        if problems:
            raise ValidationErrors(problems, f"fix the target; `doit validate --run {run_id}` rechecks")
        ruleset = ws.ruleset.ruleset
        aging = _add_debt_phases(workspace, store, plan, ruleset, _aging(ws, run_id, plan, ruleset))
        max_phases = min(ruleset.run_budgets.max_phases, plan.budgets.max_phases or ruleset.run_budgets.max_phases)
        chained = split_plan(workspace, store, plan, max_phases)
        if aging.debt.phases or chained:
            plan = load_valid_plan(ws, store)  # the plan as frozen: DEBT tier added, chain trimmed
        strategy = compile_for(ws, store, plan, aging.aged, _aged_paths(aging))
        target = target_repo(workspace, plan.target.repo)
        git = make_adapter(target)  # LocalGitCli, or the remote git worker (AUTOPACK_GIT_OUTBOX)
        git.check_available()
        git.toplevel()
        base = plan.target.base or git.current_branch()
        branch = branch_name(run_id)
        worktree = worktree_path(workspace, run_id)
        _refuse_foreign_branch(git, target, branch, base)
        git.ensure_worktree(branch, base, worktree)
        base_commit = git.resolve(base) or ""
        rec = _create_records(store, plan, strategy, target, base, base_commit, branch, worktree)
        rec.run = rec.run.model_copy(
            update={
                "chained_from": plan.chained_from,
                "chain_next": chained[0] if chained else next_in_chain(workspace, run_id),
            }
        )
        # plan.yaml is bound by run.json's plan_sha256 (the frozen-plan check names it)
        named = chain.artifacts(store.run_dir, [store.strategy_json])
        rec.run_to(
            RunState.RUN_CREATED,
            plan_sha256=strategy.plan_sha256,
            base=base,
            base_commit=base_commit,
            **{chain.ARTIFACTS: named},
        )
        _note_aging(rec, run_id, aging)
        if chained:
            rec.note(run_id, "chained", runs=chained, max_phases=max_phases)
        rec.run_to(RunState.PHASE_QUEUEING, phases=len(strategy.phases), tiers=len(strategy.tiers))
        if record_lives_in_branch(workspace, target):
            _commit_record(git, store, worktree, run_id, rec, chained)
        return rec.run


# What start_run itself writes before run.json: a crash in between may leave these, and
# starting again over them is safe. Anything else means the run went further.
_START_EVENTS = {("run", "RUN_CREATED"), ("run", "PHASE_QUEUEING"), ("note", "backlog_aging"), ("note", "chained")}


def _refuse_damaged_log(store: RunStore) -> None:
    """A run without run.json is new only if its event log says so: one that went past the
    start (run.json deleted: its finished phases would be applied again) is refused before
    anything else is looked at."""
    events = _logged_events(store.events_path)
    beyond = [e for e in events if _start_key(e) not in _START_EVENTS]
    if beyond:
        last = beyond[-1]
        raise InvalidInput(
            f"{store.events_path}: run {store.run_id} has an event log that went past its start "
            f"({len(events)} events; event {last.get('seq')} is {last.get('kind')} {last.get('entity')}) "
            f"but no run.json: its record is damaged",
            f"restore {store.run_json} (e.g. `git checkout -- {store.run_json}`), or start a new run id",
        )
    if events:
        store.events_path.unlink()  # a start that crashed before run.json: start over


def _refuse_foreign_branch(git: GitAdapter, target: Path, branch: str, base: str) -> None:
    """An integration branch with commits start_run did not make is refused: an ungated
    commit would end on the promoted branch (the preflight says so first, from the plan)."""
    head, base_sha = git.resolve(branch), git.resolve(base)
    if head is not None and head != base_sha:
        raise InvalidInput(
            f"branch '{branch}' already exists in {target} at {head[:12]}, not at the base '{base}' "
            f"({(base_sha or '?')[:12]}): start_run did not create it and will not adopt its commits",
            f"delete it if it is stale (`git -C {target} branch -D {branch}`), or start a new run id",
        )


def _start_key(event: dict[str, Any]) -> tuple[Any, Any]:
    data = event.get("data")
    return event.get("kind"), event.get("to_state") or (data.get("what") if isinstance(data, dict) else None)


def _logged_events(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    found: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            event = {"kind": "unreadable", "entity": line[:40]}
        found.append(event if isinstance(event, dict) else {"kind": "unreadable", "entity": str(event)[:40]})
    return found


def _create_records(
    store: RunStore,
    plan: Plan,
    strategy: Strategy,
    target: Path,
    base: str,
    base_commit: str,
    branch: str,
    worktree: Path,
) -> Recorder:
    write_model(store.strategy_json, strategy)
    for ps in strategy.phases:
        phase_dir = store.phase_dir(ps.index, ps.phase_id)
        write_model(
            phase_dir / "phase.json",
            PhaseRecord(run_id=plan.run_id, phase_id=ps.phase_id, tier_id=ps.tier_id, index=ps.index, name=ps.name),
        )
        write_model(phase_dir / "issues.json", PhaseIssueFile(phase_id=ps.phase_id, tier_id=ps.tier_id))
    write_model(store.issue_index_path, RunIssueIndex(run_id=plan.run_id))
    tiers, phases = initial_summaries(strategy, {t.tier_id: t.name for t in plan.tiers})
    now = utc_now()
    run = RunRecord(
        run_id=plan.run_id,
        project_id=plan.project_id,
        state=RunState.PLAN_BOOTSTRAP,
        safety_profile=plan.safety_profile,
        run_scope=plan.run_scope,
        target_repo=str(target),
        base_ref=base,
        base_commit=base_commit,
        branch=branch,
        worktree=str(worktree),
        plan_sha256=strategy.plan_sha256,
        budgets=strategy.run_budget,
        created_at=now,
        updated_at=now,
        tiers=tiers,
        phases=phases,
    )
    return Recorder(store, strategy, run)


def _commit_record(
    git: GitAdapter, store: RunStore, worktree: Path, run_id: str, rec: Recorder, chained: list[str]
) -> None:
    """The start commit carries the record, and the plans of the runs chained after this one,
    so a CI job that starts a chained run finds its plan on this branch."""
    from pipeline.run.context import RunContext

    ctx = RunContext(store.workspace, store, rec, git, worktree, True, Workspace(store.workspace))
    ctx.copy_record_into_worktree()
    for following in chained:
        plan = RunStore(store.workspace, following).plan_path
        copy = worktree / plan.relative_to(store.workspace)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(plan.read_bytes())
    git.commit(
        worktree,
        f"autopack: start run {run_id}",
        {"Autopack-Run": run_id, "Autopack-Event": str(rec.run.events_count)},
    )
