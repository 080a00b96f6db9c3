"""Secrets out of agent logs (docs/architecture.md, Agents L2): what an agent printed is kept, what
the supervisor's environment holds as a secret is not.

Two kinds of value become `***`:

- the values of the parent environment's variables whose names look secret
  (`*_TOKEN`, `*_KEY`, `*_SECRET`, `*PASSWORD*`, `*SECRET*`, `*CREDENTIALS*`, `*_PAT`,
  `AWS_*`, ...), whether or not the agent was given them: an agent given
  ANTHROPIC_API_KEY may echo it, and one that read a secret from disk may too;
- whatever the secret catalogue recognises (`pipeline.core.secret_catalogue`, the one
  the gate uses): token shapes (`sk-...`, `ghp_...`, `AKIA...`, `glpat-...`, `AIza...`,
  JWTs, bearer headers, private key blocks, ...) and secret-looking `KEY=value` values.

The log is rewritten atomically (pipeline.core.jsonio.write_text_atomic) and only when
something was masked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipeline.core import secret_catalogue
from pipeline.core.jsonio import write_text_atomic

MASK = "***"

# Names whose values are secrets. Matched case-insensitively against the whole name.
_SECRET_NAME = re.compile(
    r"""^(?:
        .*_(?:TOKEN|KEY|SECRET|PAT|PASS|PWD)      # GITHUB_TOKEN, OPENAI_API_KEY, MY_SERVICE_SECRET
      | .*(?:PASSWORD|PASSWD|SECRET|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY|API_KEY|AUTH_TOKEN).*
      | AWS_.*
      | (?:TOKEN|KEY|SECRET|PASSWORD)
    )$""",
    re.IGNORECASE | re.VERBOSE,
)
# AWS_* names that hold configuration, not secrets: masking them only hides useful context.
_NOT_SECRET = frozenset({"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_OUTPUT", "AWS_PAGER"})
# Shorter values are not masked: "1", "true" or "dev" would blank out half the log.
MIN_SECRET_LENGTH = 6


def is_secret_name(name: str) -> bool:
    return name.upper() not in _NOT_SECRET and _SECRET_NAME.match(name) is not None


def secret_values(source: Mapping[str, str] | None = None) -> list[str]:
    """Values of the secret-looking variables of `source` (default: this process's
    environment), longest first so a secret containing another is masked whole."""
    env = os.environ if source is None else source
    values = {v for k, v in env.items() if is_secret_name(k) and len(v.strip()) >= MIN_SECRET_LENGTH}
    return sorted(values, key=lambda v: (-len(v), v))


def mask_text(text: str, values: Iterable[str] = ()) -> tuple[str, int]:
    """`text` with every given value and every known token shape replaced by `***`;
    returns the text and how many replacements were made."""
    count = 0
    for value in values:
        if value and value in text:
            count += text.count(value)
            text = text.replace(value, MASK)
    spans = list(secret_catalogue.spans(text))
    if spans:
        parts, last = [], 0
        for start, end in spans:
            parts += [text[last:start], MASK]
            last = end
        text = "".join([*parts, text[last:]])
        count += len(spans)
    return text, count


def mask_file(path: Path, source: Mapping[str, str] | None = None) -> int:
    """Mask secrets in the text file at `path` in place (atomically); returns the count.
    A missing file masks nothing."""
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return 0
    masked, count = mask_text(text, secret_values(source))
    if count:
        write_text_atomic(Path(path), masked)
    return count


def masked(text: str) -> str:
    """`text` with every secret the catalogue or this process's environment knows masked:
    what the record keeps from an agent or a patch goes through here."""
    return mask_text(text, secret_values())[0]
