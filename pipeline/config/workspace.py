"""The workspace a task works in, and its configuration, loaded once per task.

A command builds one `Workspace` from the directory it runs in and passes it down; nothing
below the commands reads a profile file itself. Each part is loaded from its files the
first time it is asked for (`doit status` never parses the catalog) and kept for the rest
of the task, so a run that asks for the ruleset in ten places reads it once. Every loaded
part keeps the file it came from, for messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config.profiles import LoadedRuleset, load_ci_profiles, load_ruleset, with_plan_ci

if TYPE_CHECKING:
    from pipeline.agents.presets import AgentPreset
    from pipeline.config.catalog import CatalogFiles
    from pipeline.models.enums import CiProfileName
    from pipeline.models.plan import CiProfile


@dataclass(frozen=True)
class Workspace:
    """`root` and what its `profiles/` and `catalog/` say, merged over the built-ins."""

    root: Path

    @classmethod
    def of(cls, where: Workspace | Path | str) -> Workspace:
        """`where` itself when it is a Workspace already: entry points take either."""
        return where if isinstance(where, Workspace) else cls(Path(where))

    @cached_property
    def ruleset(self) -> LoadedRuleset:
        return load_ruleset(self.root)

    @cached_property
    def agent_presets(self) -> Mapping[str, AgentPreset]:
        from pipeline.agents.presets import load_agent_presets

        return load_agent_presets(self.root)

    @cached_property
    def base_ci_profiles(self) -> Mapping[CiProfileName, CiProfile]:
        return load_ci_profiles(self.root)

    def ci_profiles(self, plan_ci: Mapping[CiProfileName, CiProfile] | None = None) -> dict[CiProfileName, CiProfile]:
        """The CI profiles with a plan's own `ci:` section over them."""
        return with_plan_ci(self.base_ci_profiles, plan_ci)

    @cached_property
    def catalog(self) -> CatalogFiles:
        """The checked stack profiles and feature catalog (ValidationErrors when they break a rule)."""
        from pipeline.config.catalog import load_workspace

        return load_workspace(self.root)
