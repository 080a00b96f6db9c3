"""Agent presets (docs/architecture.md: Code map, Agents): how each agent CLI is run and read.

The built-in presets ship in `pipeline/data/agents.yaml`; a workspace's
`profiles/agents.yaml` is merged over them field by field (`pipeline.core.overrides.deep_merge`): a
project overrides one field of a preset (say `claude.defaults.max_turns`) or adds its own.
The lists `env`, `owned_files` and `state_dirs` add to the built-in preset's; other lists replace.

A plan names a preset (`builder: claude`) or gives options with it (`builder: {preset:
claude, model: sonnet, max_turns: 20}`); `pipeline.agents.runner` turns the two into the shell
line that runs.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from pipeline.agents.usage import UsageFormat
from pipeline.core import yamlio
from pipeline.core.errors import InvalidInput, ValidationErrors
from pipeline.core.overrides import PROFILES_DIR, builtin_path, deep_merge
from pipeline.models.base import ID_PATTERN, Frozen

AGENTS_FILE = "agents.yaml"
# The preset a bare `{command: ...}` agent runs with.
GENERIC_PRESET = "command"

# Placeholders a command template may use. {prompt}, {spec} and {feedback} become shell
# words that read the AUTOPACK_* variables, so the recorded command line stays short and
# holds no spec text; {max_turns}, {model} and {max_cost_usd} become shell-quoted values.
# AUTOPACK_PROMPT is the prompt file: the phase's spec.md for a builder, the audit brief
# (spec, profile, patch, how to answer) for an auditor.
PROMPT_WORDS: dict[str, str] = {
    "prompt": '"$(cat "$AUTOPACK_PROMPT")"',
    "spec": '"$AUTOPACK_PROMPT"',
    "feedback": '"$AUTOPACK_FEEDBACK"',
}
STDIN_REDIRECT = '< "$AUTOPACK_PROMPT"'
VALUE_PLACEHOLDERS: tuple[str, ...] = ("max_turns", "model", "max_cost_usd")
PLACEHOLDERS: tuple[str, ...] = (*PROMPT_WORDS, *VALUE_PLACEHOLDERS)
# `{name}` where name is a lower-case identifier and the brace is not shell's `${`.
PLACEHOLDER_RE = re.compile(r"(?<!\$)\{([a-z_][a-z0-9_]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")

PromptMode = Literal["argument", "file", "stdin", "env"]


class AgentPreset(Frozen):
    """One entry of agents.yaml."""

    description: str = ""
    executable: str | None = Field(
        default=None, description="program that must be on PATH; checked before the agent runs"
    )
    command: str | None = Field(
        default=None, description="shell line template; None: the plan gives `command:` (the generic preset)"
    )
    prompt: PromptMode = Field(
        default="env",
        description="argument: {prompt} in the command; file: {spec}; stdin: the spec on stdin; "
        "env: the command reads $AUTOPACK_PHASE_SPEC itself",
    )
    options: dict[str, str] = Field(
        default_factory=dict, description="value name -> flag template, appended only when the value is set"
    )
    defaults: dict[str, str | int | float] = Field(default_factory=dict, description="default placeholder values")
    usage: UsageFormat = Field(default="none", description="parser of the CLI's own output (pipeline.agents.usage)")
    env: list[str] = Field(
        default_factory=list, description="variable names (NAME or NAME_* prefix) passed through from the parent"
    )
    set_env: dict[str, str] = Field(
        default_factory=dict,
        description="variables set for the agent unless the supervisor's environment sets them "
        "(telemetry off, workspace trust, terminal width)",
    )
    owned_files: list[str] = Field(
        default_factory=list,
        description="patterns of the files the CLI writes for itself (`.aider*`, `.gemini/`): "
        "left out of every patch and recorded as excluded, whatever the target's .gitignore",
    )
    state_dirs: list[str] = Field(
        default_factory=list,
        description="directories under the agent's HOME (`~/...`) where the CLI keeps its own state: "
        "created if missing and left writable inside the sandbox, where everything else but the "
        "worktree is read-only",
    )
    install: str = Field(default="", description="how to install the CLI")
    docs: str = Field(default="", description="where the CLI's flags and output format are documented")

    @field_validator("env")
    @classmethod
    def _env_names(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not _ENV_NAME.match(n)]
        if bad:
            raise ValueError(f"not environment variable names: {bad} (a trailing * allows a prefix)")
        return names

    @field_validator("set_env")
    @classmethod
    def _set_env_names(cls, values: dict[str, str]) -> dict[str, str]:
        bad = [n for n in values if not _ENV_NAME.match(n) or n.endswith("*")]
        if bad:
            raise ValueError(f"set_env: not environment variable names: {bad}")
        return values

    @field_validator("owned_files")
    @classmethod
    def _owned_patterns(cls, patterns: list[str]) -> list[str]:
        bad = [p for p in patterns if not p.strip("/") or p.startswith("/") or ".." in p.split("/")]
        if bad:
            raise ValueError(f"owned_files: {bad} are not relative path patterns (e.g. `.aider*`, `.gemini/`)")
        return patterns

    @field_validator("options", "defaults")
    @classmethod
    def _known_values(cls, values: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(values) - set(VALUE_PLACEHOLDERS))
        if unknown:
            raise ValueError(f"unknown value name(s) {unknown}; use {list(VALUE_PLACEHOLDERS)}")
        return values

    @model_validator(mode="after")
    def _consistent(self) -> AgentPreset:
        templates = [self.command or "", *self.options.values()]
        used = {name for text in templates for name in PLACEHOLDER_RE.findall(text)}
        unknown = sorted(used - set(PLACEHOLDERS))
        if unknown:
            raise ValueError(f"unknown placeholder(s) {['{' + u + '}' for u in unknown]}; use {list(PLACEHOLDERS)}")
        if self.command is not None:
            needs = {"argument": "prompt", "file": "spec"}.get(self.prompt)
            if needs and f"{{{needs}}}" not in self.command:
                raise ValueError(f"prompt: {self.prompt} needs {{{needs}}} in the command")
        for name, flag in self.options.items():
            if f"{{{name}}}" not in flag:
                raise ValueError(f"option {name!r} must use {{{name}}} in its flag template")
        return self


@cache
def _preset_schema() -> dict[str, Any]:
    """AgentPreset's JSON schema: built once per process (pydantic rebuilds it on each call)."""
    return AgentPreset.model_json_schema()


def load_agent_presets(workspace: Path | None = None) -> dict[str, AgentPreset]:
    """The built-in presets with `<workspace>/profiles/agents.yaml` merged over them.

    Read afresh on each call (~2 ms once the schema is built): a task reads them once,
    through its `Workspace`, and keeps them for the rest of the task.
    """
    override_path = workspace / PROFILES_DIR / AGENTS_FILE if workspace is not None else None
    return _load_agent_presets(override_path)


def _load_agent_presets(override_path: Path | None) -> dict[str, AgentPreset]:
    base = yamlio.load_fast(builtin_path(AGENTS_FILE)) or {}
    override: Any = {}
    if override_path is not None and override_path.exists():
        override = yamlio.load_fast(override_path) or {}
        if not isinstance(override, dict):
            raise InvalidInput(
                f"{override_path}: expected a mapping of preset name -> preset at the top level",
                f"see {builtin_path(AGENTS_FILE)} for the shape",
            )
    source = str(override_path) if override else "built-in agents.yaml"
    merged = deep_merge(base, _with_added_lists(base, override))
    return {name: _validated(name, data, source) for name, data in merged.items()}


# Lists an override adds to (the built-in preset's names stay); other lists replace.
ADDED_LISTS: tuple[str, ...] = ("env", "owned_files", "state_dirs")


def _with_added_lists(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` with its `env`/`owned_files` lists extended by the built-in preset's, so
    adding one variable name to `codex` keeps the names codex needs."""
    out = dict(override)
    for name, preset in override.items():
        built_in = base.get(name)
        if not isinstance(preset, dict) or not isinstance(built_in, dict):
            continue
        merged = dict(preset)
        for key in ADDED_LISTS:
            ours, theirs = preset.get(key), built_in.get(key)
            if isinstance(ours, list) and isinstance(theirs, list):
                merged[key] = [*theirs, *(v for v in ours if v not in theirs)]
        out[name] = merged
    return out


def _validated(name: Any, data: Any, source: str) -> AgentPreset:
    from pipeline.core.schemas import validate_instance

    fix = f"correct {source} (presets are documented in {builtin_path(AGENTS_FILE)})"
    if not isinstance(name, str) or not re.fullmatch(ID_PATTERN, name):
        raise InvalidInput(f"{source}: agent preset name {name!r} is not a valid id", fix)
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: agent preset {name!r} must be a mapping", fix)
    problems = validate_instance(data, _preset_schema(), source=f"{source} [{name}]", positions=None)
    if problems:
        raise ValidationErrors(problems, fix)
    try:
        return AgentPreset.model_validate(data)
    except PydanticValidationError as exc:  # the rules a schema cannot state (placeholders, prompt mode)
        detail = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise InvalidInput(f"{source}: agent preset {name!r}: {detail}", fix) from exc


def preset_named(presets: dict[str, AgentPreset], name: str) -> AgentPreset:
    """The preset `name`, or the error listing the ones that exist."""
    try:
        return presets[name]
    except KeyError:
        raise InvalidInput(
            f"agent preset {name!r} is not defined",
            f"use one of {', '.join(sorted(presets))}, or define it in {PROFILES_DIR}/{AGENTS_FILE}",
        ) from None
