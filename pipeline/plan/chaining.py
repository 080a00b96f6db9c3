"""Chained runs: a plan longer than max_phases, or a single_tier plan with several tiers,
is split by tier at start.

The first run keeps the leading tiers (its plan.yaml is trimmed with comments kept);
each further chunk becomes a new run `<run_id>-partN` whose plan targets the previous
run's branch, so the branches stack. A chained run is started when the one before it
ends DONE_SUCCESS.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core import yamlio
from pipeline.core.errors import InvalidInput
from pipeline.models.base import ID_PATTERN
from pipeline.models.enums import RunScope
from pipeline.models.plan import Plan, PlanTier
from pipeline.plan.file import write_new_plan
from pipeline.store.rundir import RunStore

CHAIN_HEADER = (
    "Written by start_run of run {parent}: {why},\n"
    "so these tiers continue on branch autonomous/{parent}. This run starts as soon as\n"
    "run {parent} ends DONE_SUCCESS (`doit run` goes straight on); edit it before then.\n"
    "Its promotion target is the first run's base, once every run before it is eligible."
)


def chunk_tiers(tiers: list[PlanTier], max_phases: int) -> list[list[PlanTier]]:
    """Tiers in order, grouped so no group has more than max_phases phases."""
    chunks: list[list[PlanTier]] = [[]]
    count = 0
    for tier in tiers:
        size = len(tier.phases)
        if size > max_phases:
            raise InvalidInput(
                f"tier {tier.tier_id} alone has {size} phases; max_phases is {max_phases}",
                "split the tier into tiers of at most max_phases phases, or raise max_phases in the plan's budgets",
            )
        if count + size > max_phases:
            chunks.append([])
            count = 0
        chunks[-1].append(tier)
        count += size
    return chunks


def child_id(run_id: str, part: int) -> str:
    import re

    candidate = f"{run_id}-part{part}"
    if not re.fullmatch(ID_PATTERN, candidate):
        raise InvalidInput(
            f"run id {run_id} is too long to name its chained run {candidate}",
            "use a run id of at most 58 characters",
        )
    return candidate


def split_plan(workspace: Path, store: RunStore, plan: Plan, max_phases: int) -> list[str]:
    """Trim this run's plan to its first chunk and write the chained runs' plans.

    A single_tier plan (playbook §4.3: each run handles a single tier) with several tiers
    is split one tier per run. Returns the chained run ids (empty when the plan fits)."""
    single = plan.run_scope == RunScope.single_tier
    if len(plan.phases()) <= max_phases and not (single and len(plan.tiers) > 1):
        return []
    chunks = chunk_tiers(plan.tiers, max_phases)
    why = f"the plan had more than max_phases ({max_phases}) phases"
    if single:
        chunks = [[tier] for chunk in chunks for tier in chunk]
        why = "single_tier runs handle one tier each"
    children = [child_id(plan.run_id, n) for n in range(2, len(chunks) + 1)]
    for child in children:
        if RunStore(workspace, child).plan_path.exists():
            raise InvalidInput(
                f"run {child} already exists; cannot chain run {plan.run_id} into it",
                f"remove runs/{child} or rename run {plan.run_id}",
            )
    parent = plan.run_id
    for child, tiers in zip(children, chunks[1:], strict=True):
        data = plan.model_dump(mode="json", exclude_none=True)
        data.update(
            run_id=child,
            chained_from=parent,
            target={**data.get("target", {}), "base": f"autonomous/{parent}"},
            tiers=[t.model_dump(mode="json", exclude_none=True) for t in tiers],
        )
        path = RunStore(workspace, child).plan_path
        write_new_plan(path, data, header=CHAIN_HEADER.format(parent=parent, why=why))
        parent = child
    rt = yamlio.load_roundtrip(store.plan_path)
    yamlio.truncate_list(rt, ("tiers",), len(chunks[0]))
    yamlio.dump_roundtrip(rt, store.plan_path)
    return children


def next_in_chain(workspace: Path, run_id: str) -> str | None:
    """The run chained after `run_id` by an earlier split, if its plan is there."""
    import re

    match = re.fullmatch(r"(.+)-part(\d+)", run_id)
    candidate = f"{match.group(1)}-part{int(match.group(2)) + 1}" if match else f"{run_id}-part2"
    path = RunStore(workspace, candidate).plan_path if re.fullmatch(ID_PATTERN, candidate) else None
    if path is None or not path.exists():
        return None
    data = yamlio.load_fast(path)
    return candidate if isinstance(data, dict) and data.get("chained_from") == run_id else None
