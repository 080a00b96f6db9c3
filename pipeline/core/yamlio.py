"""All YAML reading and writing (docs/architecture.md, Code map: the only module that imports yaml or ruamel).

One module on purpose: it is the only place YAML is parsed or written (a rule the tests
enforce), so every YAML surprise is handled in one file.

Two readers, for two kinds of file:

- `load_fast` (PyYAML, C loader) for machine-read YAML such as profiles: speed matters,
  comments do not.
- `load_roundtrip` (ruamel.yaml, YAML 1.2) for the hand-edited plan: it keeps comments,
  key order and quoting so the tool can edit a plan and write it back with no diff outside
  the edit, and it keeps line/column positions so every error points at the line to fix.

YAML quietly turns some unquoted scalars into other types (`2024-01-01` is a date, `1.10`
the number 1.1). `find_surprises` reports dates; `RoundTrip.scalar_text` gives validators
the original text of a scalar so a type error can say "quote it: '1.10'".

Both ruamel and PyYAML are imported inside the functions: a task that reads no YAML does
not pay for them.
"""

from __future__ import annotations

import functools
import io
import itertools
import re
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import AutopackError, InvalidInput, ValidationErrors

if TYPE_CHECKING:
    from ruamel.yaml import YAML

JsonPath = tuple[str | int, ...]

# `<<<<<<< ours`, `=======`, `>>>>>>> theirs` (and diff3's `||||||| base`) at line start.
_CONFLICT_MARKER = re.compile(r"^(<{7}|\|{7}|>{7})(?: .*)?$|^(={7})$")

# The line breaks ruamel counts when it reports a line number.
_LINE_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")

# YAML 1.1 booleans: strings under YAML 1.2, but a person who writes them means a boolean.
YAML11_BOOLEANS = frozenset({"y", "n", "yes", "no", "on", "off"})

# Characters that do not survive unquoted or in a `|` block: the ones YAML reads as line
# breaks (\r, NEL, LS, PS) and the non-printable ones. Strings with them are written
# double-quoted, with escapes. Compiled on first use: the class spans all of Unicode and
# takes ~3 ms to compile, in every command that imports this module.
_NEEDS_ESCAPES = "[^\t\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"


@functools.cache
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


_PLAN_CONFLICT_FIX = "resolve the merge conflict in the plan and remove the markers"


# --------------------------------------------------------------------------- reading files


# What a YAML file Autopack reads may hold: a plan or profile is a few KB; nesting and
# aliases are bounded so that a hostile file cannot exhaust the stack or the memory (an
# "alias bomb": anchors holding aliases, each doubling what the next expands to).
MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_YAML_DEPTH = 64
MAX_YAML_ALIASES = 64


def _read_text(path: Path) -> str:
    """The file's text, line breaks untouched (positions and CRLF output depend on it)."""
    from pipeline.core.inputs import read_regular

    raw = read_regular(path, "YAML file", MAX_YAML_BYTES)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{path}: not UTF-8 text (byte {exc.start})", f"save {path} as UTF-8"
        ) from exc


def _check_structure(path: Path, text: str) -> bool:
    """Refuse nesting deeper than MAX_YAML_DEPTH, more than MAX_YAML_ALIASES aliases and
    any alias inside an anchored node (the exponential case), before a loader builds
    anything. Read from the parser's events, which need no recursion; a syntax error is
    left to the loader, which reports it with its position.

    True when the text is one document of untagged, unanchored nodes with no directive:
    the only kind `load_plain` reads (PyYAML and ruamel build anchors, tags and `%YAML`
    in their own ways)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    depth = aliases = documents = 0
    simple = True
    anchored: list[int] = []  # depths of the open collections that carry an anchor
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                simple = simple and event.anchor is None and event.tag is None
                if event.anchor:
                    anchored.append(depth)
                if depth > MAX_YAML_DEPTH:
                    raise _too_deep(path, event.start_mark)
            elif isinstance(event, yaml.CollectionEndEvent):
                if anchored and anchored[-1] == depth:
                    anchored.pop()
                depth -= 1
            elif isinstance(event, yaml.ScalarEvent):
                simple = simple and event.anchor is None and event.tag is None
            elif isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                simple = simple and documents == 1 and not event.version and not event.tags
            elif isinstance(event, yaml.AliasEvent):
                simple = False
                aliases += 1
                line = event.start_mark.line + 1 if event.start_mark else 0
                if anchored:
                    raise InvalidInput(
                        f"{path}:{line}: alias *{event.anchor} inside an anchored node (aliases that expand "
                        "aliases can grow without bound)",
                        f"write the value out in {path} instead of nesting aliases",
                    )
                if aliases > MAX_YAML_ALIASES:
                    raise InvalidInput(
                        f"{path}:{line}: more than {MAX_YAML_ALIASES} YAML aliases",
                        f"write the values out in {path} instead of using aliases",
                    )
    except yaml.YAMLError as exc:
        if "depth" in str(exc):  # libyaml's own nesting limit
            raise _too_deep(path, getattr(exc, "problem_mark", None)) from None
        return False
    return simple


def _too_deep(path: Path, mark: Any) -> InvalidInput:
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    return InvalidInput(f"{where}: nested more than {MAX_YAML_DEPTH} levels deep", f"flatten the YAML of {path}")


def _split_lines(text: str) -> list[str]:
    return _LINE_BREAK.split(text)


def _check_conflict_markers(path: Path, text: str, fix: str) -> None:
    """Refuse a file with merge-conflict markers before the parser makes a worse message."""
    problems = []
    for number, line in enumerate(_split_lines(text), start=1):
        match = _CONFLICT_MARKER.match(line)
        if match:
            marker = match.group(1) or match.group(2)
            problems.append(f"{path}:{number}: merge conflict marker '{marker}'")
    if problems:
        raise ValidationErrors(problems, fix)


def _syntax_error(path: Path, exc: Any) -> InvalidInput:
    """A ruamel/PyYAML MarkedYAMLError as `path:line:col: problem`."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None and context != problem:
        problem += f" ({context} at line {context_mark.line + 1})"
    if mark is None:
        return InvalidInput(f"{path}: invalid YAML: {problem}", f"fix the YAML syntax of {path}")
    line, col = mark.line + 1, mark.column + 1
    return InvalidInput(
        f"{path}:{line}:{col}: {problem}",
        f"fix the YAML syntax at line {line}, column {col} of {path}",
    )


# --------------------------------------------------------------------------- fast loader


@functools.cache
def _fast_loader_class() -> type[Any]:
    """A safe loader (C when available) that refuses duplicate keys.

    PyYAML silently keeps the last of two equal keys; a profile that defines a budget twice
    must not lose one without a word.
    """
    import yaml

    base: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class _StrictLoader(base):  # type: ignore[misc]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                key = key_node.value
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r} (first at line {seen[key].line + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
            return super().construct_mapping(node, deep=deep)

    return _StrictLoader


def load_fast(path: Path) -> Any:
    """Parse machine-read YAML (profiles) with PyYAML's C loader; errors name path:line:col."""
    import yaml

    path = Path(path)
    text = _read_text(path)
    _check_conflict_markers(
        path, text, f"resolve the merge conflict in {path} and remove the markers"
    )
    _check_structure(path, text)
    try:
        return yaml.load(text, Loader=_fast_loader_class())
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(path, exc) from exc
    except yaml.YAMLError as exc:
        raise InvalidInput(
            f"{path}: invalid YAML: {exc}", f"fix the YAML syntax of {path}"
        ) from exc


# --------------------------------------------------------------------------- plain fast path


class _Unsure(Exception):
    """The C loader met something it might read otherwise than ruamel: ruamel must read it."""


# Plain scalars YAML 1.1 (PyYAML) and 1.2 (ruamel) both read as the same int or float.
_SAME_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_SAME_FLOAT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)\.[0-9]+")
# Other plain scalars that start like a number: the versions disagree on some of them
# (`1:30`, `0o17`, `1e3`, `1_000`, `012`, `.5`, `.inf`, dates), so none is read fast.
# (`.`, `./src`, `-v` start otherwise: strings to both.)
_NUMBERISH = re.compile(r"[-+]?(?:\.?[0-9]|\.(?:inf|Inf|INF|nan|NaN|NAN)$)")
# What ruamel (YAML 1.2) reads as a bool or null; every other plain word is a string
# (`yes`, `no`, `on`, `off` are booleans only to PyYAML's YAML 1.1).
_BOOL_WORDS = frozenset({"true", "True", "TRUE", "false", "False", "FALSE"})
_NULL_WORDS = frozenset({"", "~", "null", "Null", "NULL"})
_TAG = "tag:yaml.org,2002:"


def _plain_tag(value: str) -> str:
    """The YAML 1.2 tag of a plain scalar, or _Unsure when PyYAML might not agree."""
    if value in _BOOL_WORDS:
        return _TAG + "bool"
    if value in _NULL_WORDS:
        return _TAG + "null"
    if _SAME_INT.fullmatch(value):
        return _TAG + "int"
    if _SAME_FLOAT.fullmatch(value):
        return _TAG + "float"
    if _NUMBERISH.match(value) or value in ("<<", "="):
        raise _Unsure(value)
    return _TAG + "str"


@functools.cache
def _plain_loader_class() -> type[Any] | None:
    """PyYAML's C loader resolving plain scalars as YAML 1.2 does, string keys only, no
    duplicate keys; None without libyaml (the pure-Python loader would be no faster)."""
    import yaml

    base: type[Any] | None = getattr(yaml, "CSafeLoader", None)
    if base is None:
        return None

    class _PlainLoader(base):  # type: ignore[misc,valid-type]
        def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
            if kind is yaml.ScalarNode and implicit[0]:
                return _plain_tag(value)
            return super().resolve(kind, value, implicit)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if any(key.tag != _TAG + "str" for key, _ in node.value):
                raise _Unsure("a key that is not a string")  # to_plain would turn it into text
            keys = {key.value for key, _ in node.value}
            if len(keys) != len(node.value):
                raise _Unsure("a duplicate key")  # ruamel refuses it, naming both lines
            return super().construct_mapping(node, deep=deep)

    return _PlainLoader


# Characters on whose reading the two libraries could differ: tabs, the line breaks of
# YAML 1.1 (NEL, LS, PS), a bare CR, a BOM, the non-printable ones.
_UNSURE_TEXT = "[\t\r\ufeff]|" + _NEEDS_ESCAPES
_NOT_PRINTABLE_ASCII = re.compile("[^\n\x20-\x7e]")  # when none, no need to compile _UNSURE_TEXT


def load_plain(path: Path) -> Any:
    """The file's data as `to_plain(load_roundtrip(path).data)` has it, read with PyYAML's
    C parser: no ruamel import, ~10x faster than ruamel's pure-Python parse.

    None whenever that promise cannot be kept, and for anything load_roundtrip would
    refuse: then the caller reads the file with load_roundtrip, which words every problem
    with its position. Kept out: anchors, aliases, tags, directives, tabs, unusual line
    breaks, plain scalars YAML 1.1 reads otherwise than 1.2, duplicate or non-string keys.
    """
    loader = _plain_loader_class()
    if loader is None:
        return None
    import yaml

    path = Path(path)
    try:
        text = _read_text(path)
        _check_conflict_markers(path, text, _PLAN_CONFLICT_FIX)
        # CRLF as load_roundtrip reads it; any other CR is left to ruamel
        text = text.replace("\r\n", "\n")
        if _NOT_PRINTABLE_ASCII.search(text) and _pattern(_UNSURE_TEXT).search(text):
            return None
        if not _check_structure(path, text):
            return None
        return yaml.load(text, Loader=loader)
    except (AutopackError, yaml.YAMLError, _Unsure, RecursionError):
        return None


# --------------------------------------------------------------------------- round trip


def _roundtrip_yaml(mapping: int = 2, sequence: int = 4, offset: int = 2) -> YAML:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    # never re-wrap a long line the person wrote on one line
    yaml.width = 4096
    return yaml


class RoundTrip:
    """A hand-edited YAML file as ruamel data, with its source for positions and quoting."""

    def __init__(self, path: Path, text: str, data: Any, yaml: YAML) -> None:
        self.path = path
        self.text = text
        self.data = data
        self.yaml = yaml
        self.lines = _split_lines(text)

    def position(self, json_path: JsonPath) -> tuple[int, int] | None:
        """1-based (line, col) of the key or item at `json_path`.

        When the path does not exist (a missing required key, say) this is the position of
        the nearest ancestor that does; the root mapping's first key when nothing matches.
        Nodes added after loading have no position and count as missing.
        """
        found = _root_position(self.data)
        node = self.data
        for part in json_path:
            step = _step(node, part)
            if step is None:
                break
            node, pos = step
            if pos is None:
                break
            found = pos
        return None if found is None else (found[0] + 1, found[1] + 1)

    def scalar_text(self, json_path: JsonPath) -> str | None:
        """The scalar at `json_path` exactly as written (`1.10`, `'x'`, `yes`), or None."""
        if not json_path:
            return None
        node = self.data
        for part in json_path[:-1]:
            step = _step(node, part)
            if step is None:
                return None
            node = step[0]
        pos = _value_position(node, json_path[-1])
        if pos is None or pos[0] >= len(self.lines):
            return None
        return _scalar_token(self.lines[pos[0]][pos[1] :], flow=_is_flow(node))


def _root_position(data: Any) -> tuple[int, int] | None:
    lc = getattr(data, "lc", None)
    if lc is None or lc.line is None:
        return (0, 0)
    return (lc.line, lc.col)


def _actual_key(node: Any, part: str | int) -> Any:
    """The key of mapping `node` that `part` names (`to_plain` turns `1:` into "1")."""
    if part in node:
        return part
    for key in node:
        if not isinstance(key, str) and _plain_key(key) == part:
            return key
    return None


def _step(node: Any, part: str | int) -> tuple[Any, tuple[int, int] | None] | None:
    """One step down a JSON path: (child, 0-based position of its key/item) or None."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(node, CommentedMap) and isinstance(part, str):
        key = _actual_key(node, part)
        if key is None:
            return None
        return node[key], _lc(node, "key", key)
    if isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
        return node[part], _lc(node, "item", part)
    return None


def _lc(node: Any, kind: str, key: Any) -> tuple[int, int] | None:
    try:
        line, col = getattr(node.lc, kind)(key)
    except (KeyError, IndexError, TypeError):
        return None
    return (int(line), int(col))


def _value_position(node: Any, part: str | int) -> tuple[int, int] | None:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(node, CommentedMap) and isinstance(part, str):
        key = _actual_key(node, part)
        return None if key is None else _lc(node, "value", key)
    if isinstance(node, CommentedSeq) and isinstance(part, int):
        return _lc(node, "item", part)
    return None


def _is_flow(node: Any) -> bool:
    fa = getattr(node, "fa", None)
    return bool(fa is not None and fa.flow_style())


def _scalar_token(rest: str, *, flow: bool) -> str | None:
    """The scalar token at the start of `rest` (a line from the scalar's column on)."""
    rest = _skip_properties(rest)
    if not rest or rest[0] in "*|>[{":
        return None  # an alias, a block scalar or a collection: no one-line text
    if rest[0] in "'\"":
        return _quoted_token(rest)
    end = len(rest)
    comment = re.search(r"\s#", rest)
    if comment:
        end = comment.start()
    if flow:
        stop = re.search(r"[,\]}]", rest[:end])
        if stop:
            end = stop.start()
    return rest[:end].rstrip() or None


def _skip_properties(rest: str) -> str:
    """Drop an anchor (`&a`) and a tag (`!!str`) in front of a scalar."""
    while rest[:1] in ("&", "!"):
        parts = rest.split(None, 1)
        rest = parts[1] if len(parts) == 2 else ""
    return rest


def _quoted_token(rest: str) -> str | None:
    quote = rest[0]
    i = 1
    while i < len(rest):
        char = rest[i]
        if quote == '"' and char == "\\":
            i += 2
            continue
        if char == quote:
            if quote == "'" and rest[i + 1 : i + 2] == "'":
                i += 2  # '' is an escaped quote inside single quotes
                continue
            return rest[: i + 1]
        i += 1
    return None  # continues on the next line


def load_roundtrip(path: Path) -> RoundTrip:
    """Load a hand-edited YAML file keeping comments, order, quotes and positions.

    Merge-conflict markers, syntax errors and duplicate keys are InvalidInput naming
    `path:line:col`.
    """
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    path = Path(path)
    text = _read_text(path)
    _check_conflict_markers(path, text, _PLAN_CONFLICT_FIX)
    _check_structure(path, text)
    yaml = _roundtrip_yaml(*_guess_indent(_split_lines(text)))
    try:
        # CRLF is put back on writing; inside ruamel it would leak into comment tokens
        data = yaml.load(text.replace("\r\n", "\n"))
    except DuplicateKeyError as exc:
        raise _duplicate_keys(path, text, exc) from exc
    except MarkedYAMLError as exc:
        raise _syntax_error(path, exc) from exc
    except YAMLError as exc:
        raise InvalidInput(
            f"{path}: invalid YAML: {exc}", f"fix the YAML syntax of {path}"
        ) from exc
    return RoundTrip(path, text, data, yaml)


def _duplicate_keys(path: Path, text: str, exc: Any) -> InvalidInput:
    """Every duplicate key of the file, each naming the line of the first one.

    ruamel stops at the first duplicate and does not say where the original is, so the
    file is composed again (nodes only, no construction) and every mapping is checked.
    """
    from ruamel.yaml import YAML

    try:
        root = YAML(typ="rt").compose(text)
    except Exception:  # the composer agrees the file parses; this is only a safety net
        return _syntax_error(path, exc)
    problems = [
        f"{path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}: duplicate key "
        f"'{node.value}' (first at line {first.start_mark.line + 1})"
        for node, first in _duplicate_key_nodes(root)
    ]
    if not problems:
        return _syntax_error(path, exc)
    return ValidationErrors(problems, f"keep one of each duplicated key in {path}")


def _duplicate_key_nodes(root: Any) -> Iterator[tuple[Any, Any]]:
    from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, MappingNode):
            seen: dict[str, Any] = {}
            for key, value in node.value:
                if isinstance(key, ScalarNode) and not (key.tag or "").endswith(":merge"):
                    if key.value in seen:
                        yield key, seen[key.value]
                    else:
                        seen[key.value] = key
                stack.append(value)
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)


# --------------------------------------------------------------------------- indentation


_BLOCK_SCALAR_VALUE = re.compile(r":\s+[|>][0-9+-]*\s*(#.*)?$")


def _content_col(line: str) -> int:
    """Column of the first key on `line`, past any `- ` sequence indicators."""
    col = len(line) - len(line.lstrip(" "))
    while line[col : col + 2] == "- ":
        col += 2
        col += len(line[col:]) - len(line[col:].lstrip(" "))
    return col


def _is_opener(line: str) -> bool:
    """A `key:` line whose value is the block collection on the following lines."""
    body = re.sub(r"\s+#.*$", "", line).rstrip()
    return body.endswith(":") and not body.lstrip(" -").startswith("#")


def _significant(lines: list[str]) -> list[str]:
    """Lines that carry structure: no blanks, no comments, no block-scalar content."""
    out: list[str] = []
    block_parent: int | None = None
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if block_parent is not None:
            if not stripped or indent > block_parent:
                continue
            block_parent = None
        if not stripped or stripped.startswith("#"):
            continue
        if _BLOCK_SCALAR_VALUE.search(line):
            block_parent = _content_col(line)
        out.append(line)
    return out


def _guess_indent(lines: list[str]) -> tuple[int, int, int]:
    """(mapping, sequence, offset) for ruamel's dumper, as the file's author indented.

    ruamel writes one indentation everywhere; matching the file's own keeps a round trip
    byte-for-byte. Each `key:` line with a block child votes; the majority wins.
    """
    mappings: Counter[int] = Counter()
    sequences: Counter[tuple[int, int]] = Counter()
    significant = _significant(lines)
    for line, child in itertools.pairwise(significant):
        if not _is_opener(line):
            continue
        parent = _content_col(line)
        indent = len(child) - len(child.lstrip(" "))
        if child.lstrip(" ").startswith("-") and indent >= parent:
            dash_rest = child[indent + 1 :]
            content = indent + 1 + len(dash_rest) - len(dash_rest.lstrip(" "))
            sequences[(content - parent, indent - parent)] += 1
        elif indent > parent:
            mappings[indent - parent] += 1
    mapping = mappings.most_common(1)[0][0] if mappings else 2
    if sequences:
        sequence, offset = sequences.most_common(1)[0][0]
    else:
        sequence, offset = mapping + 2, mapping
    return mapping, max(sequence, offset + 2), offset


# --------------------------------------------------------------------------- plain data


def _plain_key(key: Any) -> str:
    """A mapping key as the JSON object key it stands for."""
    if isinstance(key, str):
        return str(key)
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    if isinstance(key, date):
        return key.isoformat()
    return str(key)


def to_plain(data: Any) -> Any:
    """ruamel data as plain dict/list/str/int/float/bool/None (what JSON Schema sees).

    Dates become their ISO text and non-string keys their text: `find_surprises` reports
    both, so the plain data never hides them and never carries a type JSON lacks.
    """
    if isinstance(data, dict):
        return {_plain_key(k): to_plain(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [to_plain(v) for v in data]
    if isinstance(data, bool):
        return bool(data)
    if isinstance(data, int):
        return int(data)
    if isinstance(data, float):
        return float(data)
    if isinstance(data, str):
        return str(data)
    if isinstance(data, date):
        return data.isoformat()
    return data


def _quote(text: str) -> str:
    """`text` as a YAML single-quoted scalar."""
    return "'" + text.replace("'", "''") + "'"


def _walk(node: Any, path: JsonPath = ()) -> Iterator[tuple[JsonPath, Any, Any]]:
    """(json path, raw key or None, value) for every node under `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            child = (*path, _plain_key(key))
            yield child, key, value
            yield from _walk(value, child)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            child = (*path, index)
            yield child, None, value
            yield from _walk(value, child)


def _kind(value: Any) -> str | None:
    """What YAML read an unquoted scalar as, when a person likely meant a string."""
    if isinstance(value, datetime):
        return "a timestamp"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return "a number"
    return None


def find_surprises(rt: RoundTrip) -> list[tuple[JsonPath, int, int, str]]:
    """Scalars YAML typed against a person's intent: dates anywhere, non-string keys.

    (Numbers and booleans where a string is expected depend on the schema; the validator
    words those, with `RoundTrip.scalar_text` for the original text.)
    """
    found = []
    for path, key, value in _walk(rt.data):
        message = _surprise(rt, path, key, value)
        if message:
            line, col = rt.position(path) or (0, 0)
            found.append((path, line, col, message))
    return found


def _surprise(rt: RoundTrip, path: JsonPath, key: Any, value: Any) -> str | None:
    if key is not None and not isinstance(key, str):
        kind = _kind(key)
        text = _key_text(rt, path) or _plain_key(key)
        return f"key {text} was read as {kind}; quote it: {_quote(text)}"
    if isinstance(value, date):
        text = rt.scalar_text(path) or value.isoformat()
        return f"{text} was read as {_kind(value)}; quote it: {_quote(text)}"
    return None


def _key_text(rt: RoundTrip, path: JsonPath) -> str | None:
    pos = rt.position(path)
    if pos is None or pos[0] - 1 >= len(rt.lines):
        return None
    return _scalar_token(rt.lines[pos[0] - 1][pos[1] - 1 :].split(":", 1)[0], flow=False)


# --------------------------------------------------------------------------- writing


def _to_ruamel(value: Any) -> Any:
    """Plain data as ruamel nodes in block style, multi-line strings as `|` blocks."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.scalarstring import (
        DoubleQuotedScalarString,
        LiteralScalarString,
        SingleQuotedScalarString,
    )

    if isinstance(value, dict):
        node = CommentedMap()
        for key, item in value.items():
            node[str(key)] = _to_ruamel(item)
        return node
    if isinstance(value, list | tuple):
        seq = CommentedSeq()
        seq.extend(_to_ruamel(item) for item in value)
        return seq
    if isinstance(value, str):
        text = str(value)  # a StrEnum member becomes its value
        if _pattern(_NEEDS_ESCAPES).search(text):
            return DoubleQuotedScalarString(text)  # escapes keep them exact
        if "\n" in text and text.strip():
            return LiteralScalarString(text)
        if text.lower() in YAML11_BOOLEANS:
            # a string under YAML 1.2, but quoted so no reader takes it for a boolean
            return SingleQuotedScalarString(text)
        return text
    return value


def _render(yaml: YAML, data: Any) -> str:
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def _check_reads_back(text: str, expected: Any, what: str) -> None:
    """The emitted YAML must read back as the data: a writer bug must not reach a file."""
    from ruamel.yaml import YAML

    if to_plain(YAML(typ="rt").load(text)) != to_plain(expected):
        raise AutopackError(
            f"internal: {what} does not read back as the data it was written from",
            "report this bug with the data being written",
        )


def dump_roundtrip(rt: RoundTrip, path: Path) -> None:
    """Write `rt` to `path` atomically, keeping comments, key order, quotes, indentation."""
    from pipeline.core.jsonio import write_text_atomic

    text = _render(rt.yaml, rt.data)
    if rt.text.count("\r\n") * 2 > rt.text.count("\n"):
        text = text.replace("\n", "\r\n")  # keep a CRLF file CRLF: no whole-file diff
    _check_reads_back(text, rt.data, str(path))
    write_text_atomic(Path(path), text)


def dump_new(data: Any, header: str = "") -> str:
    """A fresh YAML document for people: block style, key order as given, `|` blocks.

    `header` (optional) becomes comment lines at the top.
    """
    from ruamel.yaml.comments import CommentedMap

    node = _to_ruamel(data)
    if header and isinstance(node, CommentedMap):
        node.yaml_set_start_comment(header)
    text = _render(_roundtrip_yaml(), node)
    _check_reads_back(text, data, "a new YAML document")
    return text


def _parent(rt: RoundTrip, json_path: JsonPath, what: str) -> Any:
    """The node at `json_path`, which must exist."""
    node = rt.data
    for depth, part in enumerate(json_path):
        step = _step(node, part)
        if step is None:
            from pipeline.core.jsonio import json_path as render

            raise InvalidInput(
                f"{rt.path}: cannot {what}: {render(json_path[: depth + 1])} does not exist",
                f"restore {render(json_path[: depth + 1])} in {rt.path}",
            )
        node = step[0]
    return node


def set_value(rt: RoundTrip, json_path: JsonPath, value: Any) -> None:
    """Set the key or item at `json_path` (a new key goes last in its mapping).

    Comments on the key stay where they were.
    """
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if not json_path:
        raise InvalidInput(f"{rt.path}: cannot replace the whole document", "name a key")
    parent = _parent(rt, json_path[:-1], "set a value")
    last = json_path[-1]
    if isinstance(parent, CommentedMap) and isinstance(last, str):
        key = _actual_key(parent, last)
        parent[last if key is None else key] = _to_ruamel(value)
    elif isinstance(parent, CommentedSeq) and isinstance(last, int) and 0 <= last < len(parent):
        parent[last] = _to_ruamel(value)
    else:
        from pipeline.core.jsonio import json_path as render

        raise InvalidInput(f"{rt.path}: cannot set {render(json_path)}", "check the path")


def append_item(rt: RoundTrip, json_path: JsonPath, value: Any) -> None:
    """Append `value` to the sequence at `json_path`, keeping the file's comments in place.

    ruamel attaches the comment lines that follow a sequence's last item to that item; they
    are moved to the new last item, so a comment that introduced the next section still
    sits right before it.
    """
    from ruamel.yaml.comments import CommentedSeq

    seq = _parent(rt, json_path, "append an item")
    if not isinstance(seq, CommentedSeq):
        from pipeline.core.jsonio import json_path as render

        raise InvalidInput(f"{rt.path}: {render(json_path)} is not a list", "check the path")
    if not seq:
        seq.fa.set_block_style()  # `phases: []` grows into a block list
    trailing = _take_trailing_comment(seq)
    seq.append(_to_ruamel(value))
    if trailing:
        _attach_trailing_comment(seq, trailing)


def _last_slots(node: Any) -> list[tuple[Any, Any, int]]:
    """(container, key, comment index) of each last entry from `node` down to a scalar."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    slots: list[tuple[Any, Any, int]] = []
    while isinstance(node, CommentedMap | CommentedSeq) and len(node):
        if isinstance(node, CommentedMap):
            key: Any = list(node.keys())[-1]
            slots.append((node, key, 2))
        else:
            key = len(node) - 1
            slots.append((node, key, 0))
        node = node[key]
    return slots


def _take_trailing_comment(seq: Any) -> str:
    """Remove and return the full-line comments after `seq`'s last item (not its EOL one).

    They hang on the deepest last entry that has a comment: the last scalar in block
    style, the key of a flow collection (`builder: {...}  # note`) otherwise.
    """
    for container, key, index in reversed(_last_slots(seq)):
        entry = container.ca.items.get(key)
        token = entry[index] if entry and len(entry) > index else None
        if token is None:
            continue
        value = str(token.value)
        if _is_block_scalar(container[key]):
            # after a `|` block every comment is a full line; the first line's indentation
            # lives in the token's column
            entry[index] = None
            return " " * int(token.column or 0) + value
        if value.startswith("#"):  # an end-of-line comment: it stays with its line
            eol, _, rest = value.partition("\n")
            token.value = eol + "\n"
            return rest
        entry[index] = None
        return value[1:] if value.startswith("\n") else value
    return ""


def _is_block_scalar(value: Any) -> bool:
    from ruamel.yaml.scalarstring import FoldedScalarString, LiteralScalarString

    return isinstance(value, LiteralScalarString | FoldedScalarString)


def _attach_trailing_comment(seq: Any, comment: str) -> None:
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    slots = _last_slots(seq)
    if not slots:
        return
    container, key, index = slots[-1]
    # a comment token starts with the end of its node's line; a `|` block already ends
    # with that line break
    block = _is_block_scalar(container[key])
    entry = container.ca.items.setdefault(key, [None, None, None, None])
    entry[index] = CommentToken(("" if block else "\n") + comment, CommentMark(0), None)


def truncate_list(rt: RoundTrip, json_path: JsonPath, keep: int) -> None:
    """Keep the first `keep` items of the list at `json_path` (their comments stay)."""
    from ruamel.yaml.comments import CommentedSeq

    seq = _parent(rt, json_path, "truncate a list")
    if not isinstance(seq, CommentedSeq):
        from pipeline.core.jsonio import json_path as render

        raise InvalidInput(f"{rt.path}: {render(json_path)} is not a list", "check the path")
    del seq[keep:]
