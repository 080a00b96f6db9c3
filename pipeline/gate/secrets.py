"""The gate's secret scan over a patch's added lines.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.gate.evidence import gate_check
from pipeline.gate.patch import ParsedPatch, PatchLine
from pipeline.models.reports import GateCheck

if TYPE_CHECKING:  # both cost tens of ms to import; a task that never gates skips them
    pass


@dataclass(frozen=True)
class _SecretRule:
    kind: str
    pattern: re.Pattern[str]
    keep: int  # leading characters that are a public prefix (AKIA, ghp_), safe to show
    group: str = "value"


_SECRET_RULES = (
    _SecretRule(
        "private key block",
        re.compile(r"(?P<value>-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----)"),
        keep=-1,  # the BEGIN line names the key type and holds nothing secret
    ),
    _SecretRule(
        "AWS access key id",
        re.compile(r"(?<![A-Z0-9])(?P<value>(?:AKIA|ASIA)[0-9A-Z]{16})(?![A-Z0-9])"),
        keep=4,
    ),
    _SecretRule("GitHub token", re.compile(r"(?P<value>gh[pousr]_[A-Za-z0-9]{36,})"), keep=4),
    _SecretRule(
        "GitHub token", re.compile(r"(?P<value>github_pat_[A-Za-z0-9_]{22,})"), keep=11
    ),
    _SecretRule("Slack token", re.compile(r"(?P<value>xox[abposr]-[A-Za-z0-9-]{10,})"), keep=5),
    _SecretRule(
        "Slack webhook",
        re.compile(r"(?P<value>https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,})"),
        keep=len("https://hooks.slack.com/services/"),
    ),
)


_GENERIC_ASSIGNMENT = re.compile(
    r"""(?ix)
    (?P<key>[a-z0-9_.-]*(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?key
        |auth[_-]?token|token|private[_-]?key)[a-z0-9_.-]*)
    ["']?\s*(?::=|=>|==|=|:)\s*
    (?P<quote>["'`])(?P<value>[^"'`\s]+)(?P=quote)
    """
)


_GENERIC_MIN_LENGTH = 16


# Bits per character: random tokens score ~4 and more, words and placeholders well below.
_GENERIC_MIN_ENTROPY = 3.5


_PLACEHOLDER = re.compile(r"\$\{|\{\{|<[^>]*>|%\(|^x+$|changeme|example|dummy|redacted", re.I)


def check_secrets(patch: ParsedPatch) -> GateCheck:
    """No added line carries something that looks like a credential."""
    found: list[str] = []
    for fc in patch.files:
        if fc.is_binary:
            continue
        for line in fc.added_lines:
            found.extend(
                f"{fc.path}:{line.number}: {kind} {masked}" for kind, masked in _secrets_in(line)
            )
    if found:
        return gate_check("secrets", False, "added lines contain what looks like secrets", found)
    return gate_check("secrets", True, "no secrets in added lines")


def _secrets_in(line: PatchLine) -> list[tuple[str, str]]:
    hits: list[tuple[str, str]] = []
    for rule in _SECRET_RULES:
        for match in rule.pattern.finditer(line.text):
            hits.append((rule.kind, _mask(match.group(rule.group), rule.keep)))
    if hits:
        return hits
    for match in _GENERIC_ASSIGNMENT.finditer(line.text):
        value = match.group("value")
        if _looks_random(value):
            hits.append((f"hard-coded {match.group('key')}", _mask(value, 0)))
    return hits


def _looks_random(value: str) -> bool:
    if len(value) < _GENERIC_MIN_LENGTH or _PLACEHOLDER.search(value):
        return False
    return _entropy(value) >= _GENERIC_MIN_ENTROPY


def _entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def _mask(value: str, keep: int) -> str:
    """Never the secret: its public prefix at most, then stars and the length."""
    if keep < 0:
        return value
    return f"{value[:keep]}{'*' * 8} ({len(value)} chars)"
