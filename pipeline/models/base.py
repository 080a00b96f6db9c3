"""The base every artifact model derives from."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

# Run, tier and phase ids: checked before they reach a path, a branch name or a command line.
Ident = Annotated[str, StringConstraints(pattern=ID_PATTERN)]

SCHEMA_VERSION = 1


class Frozen(BaseModel):
    """Immutable once validated; unknown keys are errors, never silently dropped."""

    # defer_build: a model's validator is built when first used, not at import; a command
    # pays only for the models it reads (`status`: ~10% of its start-up).
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False, defer_build=True)
