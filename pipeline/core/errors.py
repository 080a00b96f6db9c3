"""The one error hierarchy. Every user-facing failure is an AutopackError.

A message says what is wrong (naming file, line, field where known); `fix` says what to do.
The top-level handler (pipeline.commands.cli) prints `error: <message>` and `fix: <fix>` and exits
with `exit_code`: 1 a failed step or check, 2 invalid input, 3 an internal bug.
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERNAL = 3


class AutopackError(Exception):
    """Base class: a failure the user can act on."""

    exit_code = EXIT_INVALID

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def render(self) -> str:
        text = f"error: {self.message}"
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class InvalidInput(AutopackError):
    """A plan, profile, argument or artifact that does not validate."""


class ValidationErrors(InvalidInput):
    """Several located validation problems, reported together."""

    def __init__(self, problems: list[str], fix: str = "") -> None:
        self.problems = problems
        head = problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n  " + "\n  ".join(problems)
        super().__init__(head, fix)


class TransitionError(AutopackError):
    """A state change that the transition table does not allow."""

    exit_code = EXIT_INTERNAL


class RunLocked(AutopackError):
    """Another live process holds the run's lock."""

    exit_code = EXIT_FAILED


class GitError(AutopackError):
    """git is missing, or a git operation failed."""

    exit_code = EXIT_FAILED


class EnvironmentProblem(AutopackError):
    """The machine lacks what a run needs (a command, a tool)."""

    exit_code = EXIT_FAILED


class StepFailed(AutopackError):
    """A step or check ran and failed (not the user's input, not a bug)."""

    exit_code = EXIT_FAILED


class IntegrityError(AutopackError):
    """A record was edited or truncated behind the supervisor's back."""

    exit_code = EXIT_FAILED


class NotImplementedYet(AutopackError):
    """A capability that is planned but not built; never silently stubbed."""

    exit_code = EXIT_FAILED
