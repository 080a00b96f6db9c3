"""spec.md: what the builder is asked to do, rendered from plan + strategy (pure)."""

from __future__ import annotations

from pipeline.models.strategy import PhaseStrategy, Strategy


def render_spec(strategy: Strategy, ps: PhaseStrategy, description: str, feedback: str | None, attempt: int) -> str:
    scope = "\n".join(f"- `{g}`" for g in ps.scope_allow)
    lines = [
        f"# Phase {ps.phase_id}: {ps.name}",
        "",
        f"Run `{strategy.run_id}`, tier `{ps.tier_id}`, attempt {attempt} of {ps.max_builder_attempts}.",
        f"Category `{ps.task_category}`, complexity `{ps.complexity.value}`, mode `{ps.builder_mode.value}`.",
        "",
        "## Task",
        "",
        description.strip() or ps.name,
        "",
        "## Rules",
        "",
        "Only change files matching:",
        scope,
        "",
        f"Never touch: {', '.join(f'`{p}`' for p in strategy.protected_paths)}.",
    ]
    if ps.max_files:
        lines.append(f"Change at most {ps.max_files} files.")
    lines.append("Leave the changes in the working tree; the supervisor collects them as one patch.")
    if feedback:
        lines += ["", "## Feedback from the previous attempt", "", feedback.strip()]
    return "\n".join(lines) + "\n"
