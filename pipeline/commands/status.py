"""`doit status`: where a run, or every run, stands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.jsonio import read_model
from pipeline.models.run import RunRecord
from pipeline.store.rundir import RunStore


def run_status(workspace: Path, run_id: str) -> dict[str, Any]:
    store = RunStore(workspace, run_id)
    if store.run_json.exists():
        return read_model(store.run_json, RunRecord).model_dump(mode="json")
    if store.plan_path.exists():
        return {"run_id": run_id, "state": "PLAN_BOOTSTRAP", "plan": str(store.plan_path)}
    from pipeline.core.errors import InvalidInput

    raise InvalidInput(f"no run {run_id} in {workspace / 'runs'}", f"create it with `doit new_run --run {run_id}`")


def all_status(workspace: Path) -> list[dict[str, Any]]:
    return [run_status(workspace, run_id) for run_id in RunStore.list_runs(workspace)]


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]


def render_run(status: dict[str, Any]) -> str:
    if "phases" not in status:
        return f"run {status['run_id']}: {status['state']} (plan at {status['plan']}; not started)"
    spend, budgets = status["spend"], status["budgets"]
    lines = [
        f"run {status['run_id']}: {status['state']}   branch {status['branch']} from {status['base_ref']}",
        f"  safety {status['safety_profile']}, scope {status['run_scope']}; tokens {spend['tokens']} of "
        f"{budgets['token_cap']}, cost ${spend['cost_usd']:.2f}, CI runs {spend['ci_runs']}, "
        f"active {spend['active_seconds']:.0f}s",
    ]
    lines.append(f"  isolation: {status.get('isolation') or 'no step ran yet'}")
    if status.get("failure_reason"):
        lines.append(f"  failure: {status['failure_reason']}")
    if status["state"].startswith("DONE_"):
        verdict = "eligible" if status["promotion_eligible_to_main"] else "not eligible"
        lines.append(f"  promotion: {verdict} ({'; '.join(status['promotion_reasons'])})")
    rows = []
    for tier in status["tiers"]:
        clean = f" {tier['cleanliness']}" if tier.get("cleanliness") else ""
        rows.append(
            [f"tier {tier['tier_id']}", tier["name"], tier["state"] + clean, "", str(tier["spend"]["tokens"]), ""]
        )
        for phase in status["phases"]:
            if phase["tier_id"] == tier["tier_id"]:
                rows.append(
                    [
                        f"  {phase['phase_id']}",
                        phase["name"],
                        phase["state"],
                        str(phase["attempts"]),
                        str(phase["tokens"]),
                        phase.get("tag") or "",
                    ]
                )
    return "\n".join([*lines, "", *_table(["", "name", "state", "attempts", "tokens", "tag"], rows)])


def render_all(statuses: list[dict[str, Any]]) -> str:
    if not statuses:
        return "no runs yet: create one with `doit new_run --run R`"
    rows = []
    for s in statuses:
        phases = s.get("phases", [])
        done = sum(1 for p in phases if p["state"] == "COMPLETE")
        tokens = s.get("spend", {}).get("tokens", 0)
        rows.append([s["run_id"], s["state"], f"{done}/{len(phases)}", str(tokens), s.get("updated_at", "")])
    return "\n".join(_table(["run", "state", "phases done", "tokens", "updated"], rows))
