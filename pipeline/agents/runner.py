"""Builder and auditor agents (docs/architecture.md, Agents): an agent CLI or a shell command run in the
run's worktree.

An agent is untrusted: whatever it does (fails, hangs, forks, writes garbage to its result
file or its output, is not installed) comes back as an `AgentOutcome` value for the runner
to judge. Only a definition problem (no command, an unknown preset) raises.

How an agent runs is its preset (`pipeline.agents.presets`, `pipeline/data/agents.yaml`): the
command template, how the prompt is passed, the usage parser for the CLI's own output, the
environment names it needs and how to install it. A plan's `{command: ...}` is the generic
`command` preset.

Environment hygiene: the agent gets the short `AGENT_ENV_ALLOW` list of inherited names,
the names its preset declares (e.g. ANTHROPIC_API_KEY for claude only) and the
`AUTOPACK_*` variables, so a CI secret in the supervisor's environment (`GITHUB_TOKEN`,
`AWS_SECRET_ACCESS_KEY`, ...) is never handed to an agent by accident. Its output is
captured to the attempt's log, and secrets are masked there after the run
(`pipeline.core.masking`).
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.agents.accounting import combine_usage
from pipeline.agents.final import with_final_error
from pipeline.agents.presets import (
    GENERIC_PRESET,
    PLACEHOLDER_RE,
    PROMPT_WORDS,
    STDIN_REDIRECT,
    VALUE_PLACEHOLDERS,
    AgentPreset,
    load_agent_presets,
    preset_named,
)
from pipeline.agents.usage import ParsedUsage, find_json_object, parse_usage
from pipeline.core import proc, sandbox
from pipeline.core.errors import AutopackError, EnvironmentProblem, InvalidInput
from pipeline.core.jsonio import read_json, read_model, write_json_atomic, write_text_atomic
from pipeline.core.masking import mask_file, mask_text, secret_values
from pipeline.models.plan import AgentSpec
from pipeline.models.results import AuditorResult, BuilderResult, Usage

Role = Literal["builder", "auditor"]

# Inherited names an agent may see; everything else in the parent environment is dropped.
# PYTHONPATH/VIRTUAL_ENV are kept so an agent written in Python finds its interpreter's
# packages. A preset adds the names its CLI needs (`env:` in agents.yaml).
AGENT_ENV_ALLOW: tuple[str, ...] = (
    "PATH", "HOME", "USER", "LANG", "LC_*", "TERM", "TMPDIR", "TZ", "SHELL",
    "PYTHONPATH", "VIRTUAL_ENV",
    # A proxy is how a site reaches (or fences) the network: every CLI honours these.
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy",
)

# A shell reports an unknown command as exit 127 with "not found" on stderr.
_MISSING_COMMAND_RC = 127
_NOTE = "[autopack] "


@dataclass(frozen=True)
class AgentOutcome:
    """What one agent run left behind, judged by nobody yet."""

    exit_code: int | None  # None when the agent was killed for its timeout
    timed_out: bool
    duration_s: float
    log_path: Path
    result: BuilderResult | AuditorResult | None
    result_error: str | None  # the result file exists but is unusable: names file and field
    usage: Usage  # parsed from the CLI's output, else from the result file, else zeros
    missing_command: bool  # the agent's program is not installed (or the shell could not find it)
    preset: str = GENERIC_PRESET
    command: str = ""  # the shell line that ran (or would have run)
    notes: tuple[str, ...] = ()  # what the supervisor noticed (usage parsing, ignored options)
    problem: str | None = None  # a missing program: what is missing and how to install it
    transient_errors: int = 0  # errors the CLI reported and got past (warnings)
    final_error: str | None = None  # the CLI's final events say it failed

    @property
    def ok(self) -> bool:
        """The agent finished by itself with exit 0 and left no unusable result."""
        return self.exit_code == 0 and not self.timed_out and self.result_error is None


@dataclass(frozen=True)
class ResolvedAgent:
    """An AgentSpec with its preset applied: what will run."""

    preset_name: str
    preset: AgentPreset
    command: str
    executable: str | None  # checked on PATH before running; None: the shell reports it
    notes: tuple[str, ...] = ()


def run_agent(
    *,
    spec: AgentSpec,
    role: Role,
    worktree: Path,
    env_vars: Mapping[str, str],
    timeout_s: int,
    log_path: Path,
    result_path: Path,
    presets: Mapping[str, AgentPreset] | None = None,
    confinement: sandbox.Confinement = sandbox.UNCONFINED,
) -> AgentOutcome:
    """Run the agent `spec` in `worktree` and collect its exit, log, result and usage.

    `env_vars` are the AUTOPACK_* variables the caller prepared; `AUTOPACK_ROLE` and
    `AUTOPACK_RESULT` (= `result_path`) are set here so the file the agent is told about is
    the one that is read. `timeout_s` is the caller's final limit (it has already weighed
    `spec.timeout_s` against the remaining budgets). `presets` are the workspace's
    (`pipeline.agents.presets.load_agent_presets`); None means the built-in ones. `confinement`
    is the run's sandbox: the agent may write its worktree and its result's directory.

    Raises only for definition errors (no command, an unknown preset, a missing worktree);
    agent misbehaviour comes back as values.
    """
    agent = resolve_agent(spec, load_agent_presets() if presets is None else presets)
    if not worktree.is_dir():
        raise EnvironmentProblem(
            f"worktree {worktree} does not exist; cannot run the {role}",
            "start the run again (`doit start_run`) so the worktree is recreated",
        )
    # The agent runs in the worktree: a relative AUTOPACK_RESULT would point elsewhere.
    result_path = result_path.absolute()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.parent.mkdir(parents=True, exist_ok=True)
    # A result left by an earlier attempt must not be credited to this one.
    result_path.unlink(missing_ok=True)

    prompt = prompt_file(role, env_vars, result_path)
    env = agent_env(
        {**env_vars, "AUTOPACK_PROMPT": str(prompt)},
        role=role,
        result_path=result_path,
        extra_allow=agent.preset.env,
        set_env=agent.preset.set_env,
    )
    if agent.executable and shutil.which(agent.executable, path=env.get("PATH", "")) is None:
        return _not_installed(agent, role, log_path)

    writable = [result_path.parent, *state_dirs(agent.preset.state_dirs, env)]
    with confinement.jail(worktree, role, writable=writable) as jail:
        done = sandbox.run(jail, agent.command, cwd=worktree, env=env, timeout_s=timeout_s, log_path=log_path)
    parsed = with_final_error(agent.preset.usage, done.stdout, parse_usage(agent.preset.usage, done.stdout, who=role))
    verdict_note = _verdict_from_output(role, agent, parsed, done.stdout, result_path)
    result, result_error, result_usage = _read_result(result_path, role)
    usage, usage_notes = combine_usage(parsed, result_usage, agent.preset.usage, spec.model)
    # Notes quote the CLI's output (error messages): no secret may reach the record through them.
    secrets = secret_values()
    notes = tuple(mask_text(n, secrets)[0] for n in (*agent.notes, *usage_notes, *verdict_note))
    missing = _is_missing_command(done.returncode, done.timed_out, done.stdout)
    problem = mask_text(_shell_missing_problem(agent, role, done.stdout), secrets)[0] if missing else None
    _finish_log(log_path, done, timeout_s, [*notes, *([problem] if problem else [])])
    mask_file(log_path)
    mask_file(result_path)  # read above; the record keeps it only masked
    _remove_if_inside(result_path, worktree)
    return AgentOutcome(
        exit_code=None if done.timed_out else done.returncode,
        timed_out=done.timed_out,
        duration_s=done.duration_s,
        log_path=log_path,
        result=result,
        result_error=result_error,
        usage=usage,
        missing_command=missing,
        preset=agent.preset_name,
        command=agent.command,
        notes=notes,
        problem=problem,
        transient_errors=parsed.transient_errors,
        final_error=mask_text(parsed.final_error, secrets)[0] if parsed.final_error else None,
    )


def agent_env(
    env_vars: Mapping[str, str],
    *,
    role: Role,
    result_path: Path,
    source: Mapping[str, str] | None = None,
    extra_allow: Sequence[str] = (),
    set_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The complete environment of an agent: the allowlist (plus `extra_allow`, a preset's
    declared names), `env_vars`, role and result path, and the preset's `set_env` defaults
    for names the supervisor's environment does not set."""
    extra = {**env_vars, "AUTOPACK_ROLE": role, "AUTOPACK_RESULT": str(result_path)}
    defaults = dict(set_env or {})
    env = proc.scrubbed_env((*AGENT_ENV_ALLOW, *extra_allow, *defaults), extra=extra, source=source)
    for name, value in defaults.items():
        env.setdefault(name, value)  # the preset's default; the supervisor's own value wins
    return env


# -- resolving a spec against its preset -------------------------------------------------


def state_dirs(patterns: Sequence[str], env: Mapping[str, str]) -> list[Path]:
    """The CLI's own state directories under the agent's HOME, created so that the sandbox can
    leave them writable (a CLI that cannot write its config or session files fails)."""
    home = env.get("HOME")
    if not home:
        return []
    found = []
    for pattern in patterns:
        rel = pattern.removeprefix("~/")
        if rel == pattern or ".." in Path(rel).parts:
            continue  # only paths inside HOME
        path = Path(home) / rel
        path.mkdir(parents=True, exist_ok=True)
        found.append(path)
    return found


def resolve_agent(spec: AgentSpec, presets: Mapping[str, AgentPreset]) -> ResolvedAgent:
    """The shell line `spec` runs, with its preset; raises InvalidInput for a definition error."""
    if spec.preset is None:
        # A bare `{command: ...}`: the generic preset, the command runs exactly as written.
        preset = presets.get(GENERIC_PRESET) or AgentPreset()
        if spec.command is None or not spec.command.strip():
            raise InvalidInput(
                "agent has no command",
                'give the agent as `{command: "..."}` (a shell line run in the worktree) or name a preset',
            )
        notes = _check_unused_options(spec, GENERIC_PRESET, preset, "")
        return ResolvedAgent(GENERIC_PRESET, preset, _with_args(spec.command, spec.args), None, tuple(notes))
    name = spec.preset
    preset = preset_named(dict(presets), name)
    own = spec.command if spec.command and spec.command.strip() else None
    template = own or preset.command
    if template is None:
        raise InvalidInput(
            f"agent preset {name!r} runs the plan's `command:` and none is given",
            f'give it as `{{preset: {name}, command: "..."}}`',
        )
    values = _values(spec, preset)
    command = _expand(template, values, name)
    notes = list(_check_unused_options(spec, name, preset, template))
    for option, flag in preset.options.items():
        if values.get(option) is not None and f"{{{option}}}" not in template:
            command += " " + _expand(flag, values, name)
    command = _with_args(command, spec.args)
    if preset.prompt == "stdin":
        command += " " + STDIN_REDIRECT
    executable = preset.executable
    if own is not None and executable is not None and _first_word(own) != executable:
        executable = None  # the plan runs its own wrapper: let the shell judge it
    return ResolvedAgent(name, preset, command, executable, tuple(notes))


def _values(spec: AgentSpec, preset: AgentPreset) -> dict[str, Any]:
    values: dict[str, Any] = dict(preset.defaults)
    for key in VALUE_PLACEHOLDERS:
        given = getattr(spec, key)
        if given is not None:
            values[key] = given
    return values


def _expand(template: str, values: Mapping[str, Any], preset: str) -> str:
    def word(match: Any) -> str:
        key = match.group(1)
        if key in PROMPT_WORDS:
            return PROMPT_WORDS[key]
        if key not in VALUE_PLACEHOLDERS:
            return str(match.group(0))  # not ours (e.g. JSON in a plan's own command)
        value = values.get(key)
        if value is None:
            raise InvalidInput(
                f"agent preset {preset!r} needs a value for {{{key}}}",
                f"set `{key}` in the plan's agent (`{{preset: {preset}, {key}: ...}}`) or in the "
                f"preset's `defaults` in profiles/agents.yaml",
            )
        return shlex.quote(str(value))

    return PLACEHOLDER_RE.sub(word, template)


def _check_unused_options(spec: AgentSpec, name: str, preset: AgentPreset, template: str) -> list[str]:
    """Plan options the preset cannot pass to its CLI: noted, never fatal (the plan is frozen)."""
    notes = []
    for key in VALUE_PLACEHOLDERS:
        if getattr(spec, key) is None:
            continue
        if f"{{{key}}}" in template or key in preset.options:
            continue
        notes.append(f"agent preset {name!r} has no way to pass {key}; the plan's {key} is ignored")
    return notes


def _with_args(command: str, args: Sequence[str]) -> str:
    return command if not args else command + " " + " ".join(shlex.quote(a) for a in args)


def _first_word(command: str) -> str | None:
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for word in words:
        if "=" not in word:
            return word
    return None


# -- the prompt ---------------------------------------------------------------------------

AUDIT_PURPOSES = {
    "review": "The builder's patch below is about to be applied. Review it before it is.",
    "escalation": (
        "The builder could not complete this phase (its attempts are spent or it failed the same way twice). "
        "Fix the phase yourself, or reject it."
    ),
}
_MAX_PATCH_CHARS = 200_000


def prompt_file(role: Role, env_vars: Mapping[str, str], result_path: Path) -> Path:
    """The file an agent CLI is prompted with (AUTOPACK_PROMPT): the phase's spec for a
    builder; for an auditor a brief written beside its result (spec, profile, the patch,
    and how to answer), so any CLI preset can audit."""
    spec = Path(env_vars.get("AUTOPACK_PHASE_SPEC", "") or result_path.parent / "spec.md")
    if role == "builder":
        return spec
    brief = result_path.parent / "prompt.md"
    write_text_atomic(brief, audit_brief(env_vars, spec, result_path))
    return brief


def _read(path: str | Path | None, limit: int = _MAX_PATCH_CHARS) -> str:
    if not path:
        return ""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return text if len(text) <= limit else text[:limit] + f"\n[... cut at {limit} characters: read the file {path}]\n"


def audit_brief(env_vars: Mapping[str, str], spec: Path, result_path: Path) -> str:
    purpose = env_vars.get("AUTOPACK_AUDIT_PURPOSE", "review")
    lines = [
        f"# Audit ({purpose}) of phase {env_vars.get('AUTOPACK_PHASE_ID', '')}",
        "",
        "You are the Auditor of this phase, for an unattended supervisor: nobody will answer questions.",
        AUDIT_PURPOSES.get(purpose, ""),
    ]
    profile = _read(env_vars.get("AUTOPACK_AUDITOR_PROFILE"))
    if profile.strip():
        lines += ["", "## Your review profile", "", profile.strip()]
    lines += ["", "## The phase (what the builder was asked)", "", _read(spec).strip() or "(no spec)"]
    patch = _read(env_vars.get("AUTOPACK_PATCH"))
    if patch.strip():
        lines += ["", "## The patch", "", "```diff", patch.rstrip("\n"), "```"]
    lines += [
        "",
        "## Your answer",
        "",
        "Decide: approve (the patch is right as it is), revise (make the changes yourself in the working "
        "tree: they become the new patch) or reject (the phase must not be done this way).",
        f"Write the verdict as JSON to the file {result_path} if you can write there; otherwise end your "
        "final message with it as one JSON object, for example:",
        "",
        '{"verdict": "revise", "notes": "why, in one or two sentences", "issues": '
        '[{"issue_key": "short-key", "severity": "minor", "message": "what is wrong"}]}',
        "",
        'verdict is one of "approve", "revise", "reject"; severity is "minor" or "major".',
    ]
    return "\n".join(lines) + "\n"


def _verdict_from_output(
    role: Role, agent: ResolvedAgent, parsed: ParsedUsage, output: str, result_path: Path
) -> tuple[str, ...]:
    """An auditor CLI that cannot write outside its sandbox prints its verdict in its final
    message: that JSON becomes the result file. A result file it did write wins."""
    if role != "auditor" or agent.preset.usage == "none" or result_path.exists():
        return ()
    found = find_json_object(parsed.final_text or output, "verdict")
    if found is None:
        return ()
    write_json_atomic(result_path, found)
    return ("the verdict was taken from the auditor's final message",)


# -- after the run -----------------------------------------------------------------------


def _not_installed(agent: ResolvedAgent, role: Role, log_path: Path) -> AgentOutcome:
    """The preset's CLI is not on PATH: nothing runs; the log says what to install."""
    problem = (
        f"agent preset {agent.preset_name!r}: the {role}'s CLI `{agent.executable}` is not installed "
        f"(not found on PATH); install it: {agent.preset.install or 'see the preset in profiles/agents.yaml'}"
    )
    lines = [
        f"{_NOTE}{problem}",
        f"{_NOTE}the command was not run: {agent.command}",
    ]
    write_text_atomic(log_path, "\n".join(lines) + "\n")
    return AgentOutcome(
        exit_code=_MISSING_COMMAND_RC,
        timed_out=False,
        duration_s=0.0,
        log_path=log_path,
        result=None,
        result_error=None,
        usage=Usage(),
        missing_command=True,
        preset=agent.preset_name,
        command=agent.command,
        notes=agent.notes,
        problem=problem,
    )


def _shell_missing_problem(agent: ResolvedAgent, role: Role, log_text: str) -> str:
    said = next((ln.strip() for ln in log_text.splitlines() if "not found" in ln.lower()), "")
    hint = agent.preset.install or "install the program the command runs, or correct its path"
    return f"agent preset {agent.preset_name!r}: the {role} command was not found ({said}); {hint}"


def _finish_log(log_path: Path, done: proc.ProcResult, timeout_s: int, notes: Sequence[str] = ()) -> str:
    """The log's text, with what the supervisor saw appended so the log explains itself."""
    text = done.stdout
    lines: list[str] = []
    if done.stderr:  # only when the shell itself could not be started
        lines.append(done.stderr.rstrip("\n"))
    if done.timed_out:
        lines.append(f"{_NOTE}agent timed out after {timeout_s}s; its process group was killed")
    lines += [f"{_NOTE}{note}" for note in notes]
    if lines:
        sep = "" if not text or text.endswith("\n") else "\n"
        with log_path.open("a", encoding="utf-8") as fh:
            fh.write(sep + "\n".join(lines) + "\n")
        text += sep + "\n".join(lines) + "\n"
    return text


def _is_missing_command(returncode: int, timed_out: bool, log_text: str) -> bool:
    # rc 127 alone is ambiguous (a script may exit 127 on purpose); the shell's message
    # ("sh: 1: foo: not found", "bash: foo: command not found") makes it certain.
    return not timed_out and returncode == _MISSING_COMMAND_RC and "not found" in log_text.lower()


def _read_result(
    result_path: Path, role: Role
) -> tuple[BuilderResult | AuditorResult | None, str | None, Usage]:
    """(result, error, usage) from the agent's result file; never raises."""
    if not result_path.is_file():
        if role == "auditor":
            # An auditor's whole output is its verdict: no file is an unusable result.
            missing = f"{result_path}: the auditor wrote no result (a verdict is required)"
            return None, missing, Usage()
        return None, None, Usage()
    model: type[BuilderResult] | type[AuditorResult] = (
        BuilderResult if role == "builder" else AuditorResult
    )
    try:
        result = read_model(result_path, model)
    except AutopackError as exc:
        return None, exc.message, _salvage_usage(result_path)
    except OSError as exc:  # e.g. the agent made its file unreadable
        return None, f"{result_path}: cannot read the result: {exc.strerror}", Usage()
    return result, None, result.usage


def _salvage_usage(result_path: Path) -> Usage:
    """The usage block of an otherwise invalid result: tokens spent still count to budgets."""
    try:
        data: Any = read_json(result_path)
    except (AutopackError, OSError):
        return Usage()
    if not isinstance(data, dict):
        return Usage()
    try:
        return Usage.model_validate(data.get("usage", {}))
    except ValueError:  # pydantic's ValidationError is a ValueError
        return Usage()


def _remove_if_inside(result_path: Path, worktree: Path) -> None:
    """Delete a result file written inside the worktree, so it never becomes part of the patch.

    A result kept in the run record (`runs/...`, inside the worktree when a CI job works in
    place on the integration branch) is the record, never part of a patch: it stays."""
    inside = result_path.resolve().is_relative_to(worktree.resolve())
    if inside and not result_path.resolve().is_relative_to((worktree / "runs").resolve()):
        with contextlib.suppress(FileNotFoundError):
            result_path.unlink()
