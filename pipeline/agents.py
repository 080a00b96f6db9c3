"""Builder and auditor agents (DESIGN §6): a shell command run in the run's worktree.

An agent is untrusted: whatever it does (fails, hangs, forks, writes garbage to its result
file, is not installed) comes back as an `AgentOutcome` value for the runner to judge.
Only a definition problem in the plan (no command, an unbuilt preset) raises.

The agent gets a scrubbed environment: the short `AGENT_ENV_ALLOW` list of inherited
names plus the `AUTOPACK_*` variables, so a CI secret in the supervisor's environment
(`GITHUB_TOKEN`, `AWS_SECRET_ACCESS_KEY`, ...) is never handed to an agent by accident.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline import proc
from pipeline.errors import AutopackError, EnvironmentProblem, InvalidInput, NotImplementedYet
from pipeline.jsonio import read_json, read_model
from pipeline.models.plan import AgentSpec
from pipeline.models.results import AuditorResult, BuilderResult, Usage

Role = Literal["builder", "auditor"]

# Inherited names an agent may see; everything else in the parent environment is dropped.
# PYTHONPATH/VIRTUAL_ENV are kept so an agent written in Python finds its interpreter's
# packages. (Agent presets will be able to declare extra names; not built yet.)
AGENT_ENV_ALLOW: tuple[str, ...] = (
    "PATH", "HOME", "USER", "LANG", "LC_*", "TERM", "TMPDIR", "TZ", "SHELL",
    "PYTHONPATH", "VIRTUAL_ENV",
)

# A shell reports an unknown command as exit 127 with "not found" on stderr.
_MISSING_COMMAND_RC = 127

_PRESET_MESSAGE = "agent presets arrive with issue 7; give `command:` in the plan"


@dataclass(frozen=True)
class AgentOutcome:
    """What one agent run left behind, judged by nobody yet."""

    exit_code: int | None  # None when the agent was killed for its timeout
    timed_out: bool
    duration_s: float
    log_path: Path
    result: BuilderResult | AuditorResult | None
    result_error: str | None  # the result file exists but is unusable: names file and field
    usage: Usage  # from the result file when it has one, else zeros
    missing_command: bool  # the shell could not find the agent's program

    @property
    def ok(self) -> bool:
        """The agent finished by itself with exit 0 and left no unusable result."""
        return self.exit_code == 0 and not self.timed_out and self.result_error is None


def run_agent(
    *,
    spec: AgentSpec,
    role: Role,
    worktree: Path,
    env_vars: Mapping[str, str],
    timeout_s: int,
    log_path: Path,
    result_path: Path,
) -> AgentOutcome:
    """Run `spec.command` in `worktree` and collect its exit, log, result and usage.

    `env_vars` are the AUTOPACK_* variables the caller prepared; `AUTOPACK_ROLE` and
    `AUTOPACK_RESULT` (= `result_path`) are set here so the file the agent is told about is
    the one that is read. `timeout_s` is the caller's final limit (it has already weighed
    `spec.timeout_s` against the remaining budgets).

    Raises only for definition errors (no command, a preset, a missing worktree); agent
    misbehaviour comes back as values.
    """
    command = _command_of(spec)
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

    env = agent_env(env_vars, role=role, result_path=result_path)
    done = proc.run(command, cwd=worktree, env=env, timeout_s=timeout_s, log_path=log_path)
    log_text = _finish_log(log_path, done, timeout_s)

    result, result_error, usage = _read_result(result_path, role)
    _remove_if_inside(result_path, worktree)
    return AgentOutcome(
        exit_code=None if done.timed_out else done.returncode,
        timed_out=done.timed_out,
        duration_s=done.duration_s,
        log_path=log_path,
        result=result,
        result_error=result_error,
        usage=usage,
        missing_command=_is_missing_command(done.returncode, done.timed_out, log_text),
    )


def agent_env(
    env_vars: Mapping[str, str],
    *,
    role: Role,
    result_path: Path,
    source: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The complete environment of an agent: the allowlist, `env_vars`, role and result path."""
    extra = {**env_vars, "AUTOPACK_ROLE": role, "AUTOPACK_RESULT": str(result_path)}
    return proc.scrubbed_env(AGENT_ENV_ALLOW, extra=extra, source=source)


def _command_of(spec: AgentSpec) -> str:
    """The shell line to run, or the definition error that prevents running anything."""
    # Any preset raises, even with a command beside it: a preset would change how the
    # agent is run and read (options, usage format), which cannot be honoured yet.
    if spec.preset is not None:
        raise NotImplementedYet(
            f"agent preset {spec.preset!r}: {_PRESET_MESSAGE}",
            "replace the preset with `{command: \"...\"}` (a shell line run in the worktree)",
        )
    if spec.command is None or not spec.command.strip():
        raise InvalidInput(
            "agent has no command",
            "give the agent as `{command: \"...\"}` (a shell line run in the worktree)",
        )
    return spec.command


def _finish_log(log_path: Path, done: proc.ProcResult, timeout_s: int) -> str:
    """The log's text, with what the supervisor saw appended so the log explains itself."""
    text = done.stdout
    notes: list[str] = []
    if done.stderr:  # only when the shell itself could not be started
        notes.append(done.stderr.rstrip("\n"))
    if done.timed_out:
        notes.append(f"[autopack] agent timed out after {timeout_s}s; its process group was killed")
    if notes:
        sep = "" if not text or text.endswith("\n") else "\n"
        with log_path.open("a", encoding="utf-8") as fh:
            fh.write(sep + "\n".join(notes) + "\n")
        text += sep + "\n".join(notes) + "\n"
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
    """Delete a result file written inside the worktree, so it never becomes part of the patch."""
    if result_path.resolve().is_relative_to(worktree.resolve()):
        with contextlib.suppress(FileNotFoundError):
            result_path.unlink()
