"""The one catalogue of what a secret looks like, shared by the gate and the masking.

Linear in the input: the text is cut into tokens by one regular expression with no
backtracking (maximal runs of `[A-Za-z0-9_-]`), each token is compared with the known
token shapes by its prefix and a single character class, and the few constructs that
span tokens (a JWT, a `Bearer` header, a private key block, a Slack webhook, a
`KEY=value` assignment) are examined with bounded look-ahead from the token that starts
them. A 1 MB line costs one pass (`bench/secrets.py`).

What counts, and what must not (a hit ends the run):

- token shapes: AWS access key ids, GitHub (`ghp_`, `github_pat_`), GitLab (`glpat-`),
  Slack (`xox?-`, webhooks), OpenAI (`sk-`, `sk-proj-`), Anthropic (`sk-ant-`), Google
  (`AIza`), Stripe live keys, npm tokens, JWTs, `Bearer` headers, private key blocks;
- `KEY=value`, `export KEY=value`, `key: value`, `"key": "value"` where the key names a
  secret (password, secret, token, api key, ...) and the value looks random (16+
  characters, letters and digits, high entropy); in `.env`-style files any non-placeholder
  value of a secret-named key;
- never: git SHAs, checksums and other pure hex, UUIDs, `${VAR}` / `$VAR` / `{{ var }}` /
  `<placeholder>` values, references to the environment or to code (`os.environ[...]`,
  `settings.API_KEY`), words like `changeme` or `example`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

# Tokens are maximal runs of [A-Za-z0-9_-]. Only the tokens that could start a secret are
# visited: one that begins with a known prefix, or contains a secret word and is followed
# by an assignment. The lookbehind pins every attempt to a token's first character and the
# possessive runs never give characters back, so each token is scanned a bounded number
# of times.
_SEP = r"""["'`]?[ \t]{0,8}(?::=|=>|=|:)[ \t]{0,8}["'`]?"""
_CANDIDATE = re.compile(
    r"(?<![A-Za-z0-9_-])(?:"
    r"(?:AKIA|ASIA)[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22}|glpat-[A-Za-z0-9_-]{20}"
    r"|xox[abposr]-[A-Za-z0-9-]{10}|sk-[A-Za-z0-9_-]{20}|[sr]k_live_[0-9A-Za-z]{16}|AIza[0-9A-Za-z_-]{35}"
    r"|npm_[A-Za-z0-9]{36}|eyJ[A-Za-z0-9_-]{8}"
    r"|[Bb]earer(?=[ \t]{1,8}[A-Za-z0-9._~+/-]{20})|-----BEGIN(?= )|https(?=://hooks\.slack\.com/)"
    r"|(?=[A-Za-z0-9_-]*?(?i:passw|pwd|secret|api_?key|api-key|access_?key|auth_?token|token|private_?key|credential))"
    r"[A-Za-z0-9_-]++(?=" + _SEP + r"""[^\s"'`,;=:<>]{8})"""
    r")[A-Za-z0-9_-]*+"
)


@dataclass(frozen=True)
class Hit:
    """One secret found: its kind, where it is in the text, what may be shown of it."""

    kind: str
    start: int
    end: int
    keep: int  # leading characters that are a public prefix (AKIA, ghp_): safe to show

    def shown(self, text: str) -> str:
        """Never the secret: its public prefix at most, then stars and the length."""
        value = text[self.start : self.end]
        if self.keep < 0:  # a key block's BEGIN line names the key type and holds nothing secret
            return value.split("\n", 1)[0]
        return f"{value[: self.keep]}{'*' * 8} ({len(value)} chars)"


@dataclass(frozen=True)
class _Shape:
    kind: str
    prefixes: tuple[str, ...]
    rest: re.Pattern[str]  # one character class, fullmatched against the rest of the token
    min_rest: int
    max_rest: int = 10_000
    mixed: bool = False  # the rest must hold letters and digits (not a kebab-case word)


def _cls(chars: str) -> re.Pattern[str]:
    return re.compile(f"[{chars}]+")


_SHAPES: tuple[_Shape, ...] = (
    _Shape("AWS access key id", ("AKIA", "ASIA"), _cls("0-9A-Z"), 16, 16),
    _Shape("GitHub token", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), _cls("A-Za-z0-9"), 36),
    _Shape("GitHub token", ("github_pat_",), _cls("A-Za-z0-9_"), 22),
    _Shape("GitLab token", ("glpat-",), _cls("A-Za-z0-9_-"), 20),
    _Shape("Slack token", tuple(f"xox{c}-" for c in "abposr"), _cls("A-Za-z0-9-"), 10),
    _Shape("Anthropic key", ("sk-ant-",), _cls("A-Za-z0-9_-"), 20, mixed=True),
    _Shape("OpenAI key", ("sk-proj-", "sk-"), _cls("A-Za-z0-9_-"), 20, mixed=True),
    _Shape("Google API key", ("AIza",), _cls("0-9A-Za-z_-"), 35, 35),
    _Shape("Stripe key", ("sk_live_", "rk_live_"), _cls("0-9A-Za-z"), 16),
    _Shape("npm token", ("npm_",), _cls("A-Za-z0-9"), 36, 36),
)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
_BEARER = re.compile(r"[Bb]earer[ \t]{1,8}(?P<value>[A-Za-z0-9._~+/-]{20,}=*)")
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_SLACK_HOOK = re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,}")

_SECRET_WORDS = (
    "password", "passwd", "pwd", "secret", "apikey", "api_key", "api-key", "accesskey", "access_key",
    "auth_token", "authtoken", "token", "private_key", "privatekey", "credential", "client_secret",
)
# key, optional closing quote, separator, optional opening quote: bounded look-ahead
_ASSIGN = re.compile(r"""["'`]?[ \t]{0,8}(?::=|=>|=|:)[ \t]{0,8}(?P<q>["'`]?)(?P<value>[^\s"'`,;=:<>]{1,256}=*)""")
_PLACEHOLDER = re.compile(
    r"\$|\{\{|<[^>]*>|%\(|%s|^x+$|^\*+$|changeme|change_me|example|dummy|redacted|placeholder|your[_-]|"
    r"environ|getenv|process\.env|secrets\.|vault:|^none$|^null$|^true$|^false$",
    re.IGNORECASE,
)
_HEX = re.compile(r"(?:sha\d*[:-])?[0-9a-fA-F]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_CODE_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+(?:\(\)?)?")
_PEM_MAX = 32_768  # a key block longer than this is masked up to its BEGIN line only
_MIN_GENERIC = 16
_MIN_DOTENV = 8
_MIN_ENTROPY = 3.5  # bits per character: random tokens score ~4 and more, words well below


def find(text: str, dotenv: bool = False) -> list[Hit]:
    """Every secret in `text` (any length, any number of lines), in order of position.
    `dotenv`: the text is a `.env`-style file, where any value of a secret-named key counts."""
    hits: list[Hit] = []
    consumed = 0  # a span already reported is not reported again (a JWT's tokens, a key block)
    for match in _CANDIDATE.finditer(text):
        start = match.start()
        if start < consumed:
            continue
        hit = _at_token(text, match.group(), start, match.end(), dotenv)
        if hit is not None:
            hits.append(hit)
            consumed = hit.end
    return hits


def is_dotenv(path: str) -> bool:
    """`.env`, `.env.local`, `prod.env`, `.envrc`: files of `NAME=value` lines."""
    name = PurePosixPath(path).name.lower()
    return name in (".env", ".envrc") or name.startswith(".env.") or name.endswith(".env")


def _at_token(text: str, token: str, start: int, end: int, dotenv: bool) -> Hit | None:
    for shape in _SHAPES:
        found = _shape_hit(shape, token, start)
        if found is not None:
            return found
    if token.startswith("eyJ"):
        jwt = _JWT.match(text, start)
        if jwt:
            return Hit("JWT", start, jwt.end(), 0)
    if token in ("Bearer", "bearer"):
        bearer = _BEARER.match(text, start)
        if bearer and _mixed(bearer.group("value")):
            return Hit("bearer token", bearer.start("value"), bearer.end("value"), 0)
    if token == "-----BEGIN":
        pem = _PEM.match(text, start)
        if pem:
            tail = _PEM_END.search(text, pem.end(), pem.end() + _PEM_MAX)
            return Hit("private key block", pem.start(), tail.end() if tail else pem.end(), -1)
    if token == "https" and text.startswith("://hooks.slack.com/", end):
        hook = _SLACK_HOOK.match(text, start)
        if hook:
            return Hit("Slack webhook", start, hook.end(), len("https://hooks.slack.com/services/"))
    return _assignment(text, token, end, dotenv)


def _shape_hit(shape: _Shape, token: str, start: int) -> Hit | None:
    for prefix in shape.prefixes:
        if token.startswith(prefix):
            rest = token[len(prefix) :]
            if (
                shape.min_rest <= len(rest) <= shape.max_rest
                and shape.rest.fullmatch(rest)
                and (not shape.mixed or _mixed(rest))
            ):
                return Hit(shape.kind, start, start + len(token), len(prefix))
            return None
    return None


def _assignment(text: str, key: str, end: int, dotenv: bool) -> Hit | None:
    lowered = key.lower()
    if not any(word in lowered for word in _SECRET_WORDS):
        return None
    found = _ASSIGN.match(text, end)
    if not found:
        return None
    value = found.group("value")
    if len(value) < (_MIN_DOTENV if dotenv else _MIN_GENERIC):
        return None  # cheap first: most assignments are short
    for shape in _SHAPES:  # a known token assigned to a key is named for what it is
        known = _shape_hit(shape, value, found.start("value"))
        if known is not None:
            return known
    quoted = bool(found.group("q"))
    if _is_secret_value(value, quoted, dotenv):
        return Hit(f"hard-coded {key}", found.start("value"), found.end("value"), 0)
    return None


def _is_secret_value(value: str, quoted: bool, dotenv: bool) -> bool:
    if _PLACEHOLDER.search(value) or _HEX.fullmatch(value) or _UUID.fullmatch(value):
        return False
    if dotenv:
        return len(value) >= _MIN_DOTENV
    if len(value) < _MIN_GENERIC or (not quoted and _CODE_REF.fullmatch(value)):
        return False
    return _mixed(value) and _entropy(value) >= _MIN_ENTROPY


def _mixed(value: str) -> bool:
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


def _entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def spans(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of every secret in `text`, for masking."""
    for hit in find(text):
        yield hit.start, hit.end
