"""The base every artifact model derives from."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def ref_problem(value: str) -> str | None:
    """Why `value` (matching ID_PATTERN) cannot be a component of a git ref name, if it
    cannot: ids become `autonomous/<run>/<phase>` (`git check-ref-format`)."""
    if ".." in value:
        return "contains '..'"
    if value.endswith("."):
        return "ends with '.'"
    if value.endswith(".lock"):
        return "ends with '.lock'"
    return None


def _ref_safe(value: str) -> str:
    problem = ref_problem(value)
    if problem:
        raise ValueError(f"{value!r} cannot be part of a git branch or tag name: it {problem}")
    return value


# Run, tier and phase ids: checked before they reach a path, a branch name or a command line.
Ident = Annotated[str, StringConstraints(pattern=ID_PATTERN), AfterValidator(_ref_safe)]

SCHEMA_VERSION = 1


class Frozen(BaseModel):
    """Immutable once validated; unknown keys are errors, never silently dropped."""

    # defer_build: a model's validator is built when first used, not at import; a command
    # pays only for the models it reads (`status`: ~10% of its start-up).
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False, defer_build=True)
