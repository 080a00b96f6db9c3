"""A markdown plan (`comprehensive_plan.md`) as plan data, and plan data as markdown.

The format (docs/plan-from-markdown.md is an example):

    # Title                      first line of the plan's description (optional)
    project_id: shop             plan keys, directly under the title
    safety_profile: normal
                                 free text: the rest of the description
    ## Tier name                 a tier (id T1, T2, ... unless an `id:` line says)
    id: T1
    free text                    the tier's description
    ### Phase name               a phase (id F<tier>.<n> unless an `id:` line says)
    category: feature_implementation
    complexity: medium
    mode: scaffolding_heavy
    scope: app/**, tests/**
    allows: submodules, filters  git features the gate refuses unless declared
    free text                    the phase's description, handed to the builder

Key lines are read only directly under a heading (blank lines may come first); once free
text starts, the rest is text. HTML comments are dropped; fenced code blocks are text.
What cannot be read is reported as `file.md:LINE: message`, every problem at once.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, get_args

from pipeline.core.errors import ValidationErrors
from pipeline.models.base import ID_PATTERN
from pipeline.models.enums import BuilderMode, CiProfileName, Complexity, RunScope, SafetyProfile
from pipeline.models.plan import GitFeature

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$|^(#{1,6})[ \t]*$")
_KEY_LINE = re.compile(r"^[ \t]*([A-Za-z][A-Za-z_ -]*?)[ \t]*:[ \t]*(.*?)[ \t]*$")
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
_ID = re.compile(ID_PATTERN)

# key as written -> canonical key, per level
_PLAN_KEYS = {
    "project_id": "project_id",
    "project": "project_id",
    "repo": "repo",
    "base": "base",
    "safety_profile": "safety_profile",
    "run_scope": "run_scope",
    "builder": "builder",
    "auditor": "auditor",
}
_TIER_KEYS = {"id": "id", "tier_id": "id"}
_PHASE_KEYS = {
    "id": "id",
    "phase_id": "id",
    "category": "category",
    "task_category": "category",
    "complexity": "complexity",
    "mode": "mode",
    "builder_mode": "mode",
    "scope": "scope",
    "deny": "deny",
    "ci_profile": "ci_profile",
    "allows": "allows",
}
_ENUMS: dict[str, list[str]] = {
    "complexity": [c.value for c in Complexity],
    "mode": [m.value for m in BuilderMode],
    "ci_profile": [c.value for c in CiProfileName],
    "safety_profile": [s.value for s in SafetyProfile],
    "run_scope": [s.value for s in RunScope],
    "allows": list(get_args(GitFeature)),
}

_PHASE_ENUM_FIELDS = (("complexity", "complexity"), ("mode", "builder_mode"), ("ci_profile", "ci_profile"))


@dataclass
class _Section:
    level: int  # 1 plan title (or the top of the file), 2 tier, 3 phase
    title: str
    line: int  # 1-based line of the heading (1 for the top of the file)
    keys: dict[str, tuple[str, int]] = field(default_factory=dict)
    misspelt: set[str] = field(default_factory=set)  # keys reported as near misses
    text: list[str] = field(default_factory=list)
    has_title: bool = True


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[tuple[int, str]] = []

    def error(self, line: int, message: str) -> None:
        self.problems.append((line, message))


def _strip_comments(lines: list[str]) -> list[str]:
    """HTML comments blanked out (line numbers kept); fenced code left as it is."""
    out: list[str] = []
    in_comment = False
    fence: str | None = None
    for line in lines:
        if fence is None and not in_comment:
            match = _FENCE.match(line)
            if match:
                fence = match.group(1)[0] * 3
                out.append(line)
                continue
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            out.append(line)
            continue
        kept = ""
        rest = line
        while rest:
            if in_comment:
                end = rest.find("-->")
                if end < 0:
                    rest = ""
                    break
                rest = rest[end + 3 :]
                in_comment = False
            else:
                start = rest.find("<!--")
                if start < 0:
                    kept += rest
                    break
                kept += rest[:start]
                rest = rest[start + 4 :]
                in_comment = True
        out.append(kept if kept.strip() or not line.strip() else "")
    return out


def _sections(lines: list[str], reader: _Reader) -> list[_Section]:
    top = _Section(level=1, title="", line=1, has_title=False)
    sections = [top]
    fence: str | None = None
    for number, line in enumerate(lines, start=1):
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            sections[-1].text.append(line)
            continue
        match = _FENCE.match(line)
        if match:
            fence = match.group(1)[0] * 3
            sections[-1].text.append(line)
            continue
        heading = _HEADING.match(line)
        if heading is None or len(heading.group(1) or heading.group(3)) > 3:
            sections[-1].text.append(line)
            continue
        level = len(heading.group(1) or heading.group(3))
        title = (heading.group(2) or "").strip()
        if not title:
            reader.error(number, f"empty {'#' * level} heading: give it a name")
        if level == 1:
            if top.has_title or len(sections) > 1 or any(t.strip() for t in top.text):
                reader.error(number, "a second `#` title, or a title below other text: use `##` for tiers")
                sections[-1].text.append(line)
                continue
            top.title, top.line, top.has_title = title, number, True
            top.text = []  # blank lines (or dropped comments) above the title
            continue
        sections.append(_Section(level=level, title=title, line=number))
    return sections


def _read_keys(section: _Section, known: dict[str, str], reader: _Reader, lines_from: int) -> None:
    """Move the key lines under `section`'s heading into `section.keys`; the rest is text."""
    text = section.text
    index = 0
    while index < len(text) and not text[index].strip():
        index += 1
    while index < len(text):
        line = text[index]
        number = lines_from + index
        match = _KEY_LINE.match(line)
        if not line.strip() or match is None:
            break
        written = match.group(1).strip().lower().replace(" ", "_").replace("-", "_")
        key = known.get(written)
        if key is None:
            close = difflib.get_close_matches(written, list(known), n=1, cutoff=0.75)
            if close:
                reader.error(
                    number, f"unknown key {match.group(1).strip()!r} (did you mean {close[0]!r}?)"
                )
                section.misspelt.add(known[close[0]])
                index += 1
                continue
            break  # free text that happens to hold a colon
        if key in section.keys:
            reader.error(number, f"duplicate `{written}:` (first at line {section.keys[key][1]})")
        else:
            section.keys[key] = (match.group(2), number)
        index += 1
    rest = text[index:]
    fence: str | None = None
    for offset, line in enumerate(rest):
        opening = _FENCE.match(line)
        if fence is not None or opening:
            if fence is None and opening:
                fence = opening.group(1)[0] * 3
            elif fence is not None and line.strip().startswith(fence):
                fence = None
            continue
        match = _KEY_LINE.match(line)
        if match and match.group(1) in known and match.group(1) == match.group(1).lower() and match.group(2):
            reader.error(
                lines_from + index + offset,
                f"`{match.group(1)}:` line below free text: key lines go directly under the heading",
            )
    section.text = rest


def _text(lines: Iterable[str]) -> str:
    kept = list(lines)
    while kept and not kept[0].strip():
        kept.pop(0)
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join(line.rstrip() for line in kept)


def _enum(reader: _Reader, key: str, value: str, line: int) -> str | None:
    allowed = _ENUMS[key]
    if value in allowed:
        return value
    close = difflib.get_close_matches(value, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    reader.error(line, f"{key} {value!r} is not one of {', '.join(allowed)}{hint}")
    return None


def _globs(reader: _Reader, key: str, value: str, line: int) -> list[str]:
    globs = [g.strip().strip("`") for g in value.split(",") if g.strip().strip("`")]
    if not globs:
        reader.error(line, f"`{key}:` names no paths: write globs separated by commas (app/**, tests/**)")
    return globs


def _ident(reader: _Reader, kind: str, value: str, line: int) -> str | None:
    if _ID.match(value):
        return value
    reader.error(
        line,
        f"{kind} id {value!r} is not valid: use letters, digits, '.', '_', '-' (max 64), "
        "starting with a letter or digit",
    )
    return None


def parse_markdown(
    text: str, source: str, run_id: str, categories: Collection[str] | None = None
) -> dict[str, Any]:
    """The plan data of a markdown plan; ValidationErrors with `source:LINE:` problems.

    The result holds only what the markdown says (no agents unless it names them, no
    target unless it names a repo); `categories` (the ruleset's) checks `category:` lines.
    """
    reader = _Reader(source)
    lines = _strip_comments(text.splitlines())
    sections = _sections(lines, reader)
    top = sections[0]
    _read_keys(top, _PLAN_KEYS, reader, top.line + 1 if top.has_title else 1)
    plan: dict[str, Any] = {"run_id": run_id}
    plan.update(_plan_keys(top, reader))
    body = _text(top.text)
    description = top.title if top.has_title else ""
    if body:
        description = f"{description}\n\n{body}" if description else body
    if description:
        plan["description"] = description
    tiers: list[dict[str, Any]] = []
    tier_lines: list[int] = []
    seen: dict[str, tuple[str, int, bool]] = {}
    for section in sections[1:]:
        if section.level == 2:
            _read_keys(section, _TIER_KEYS, reader, section.line + 1)
            tier = _tier(section, len(tiers) + 1, reader, seen)
            tiers.append(tier)
            tier_lines.append(section.line)
            continue
        if not tiers:
            reader.error(
                section.line, f"phase {section.title!r} is not under a tier: add a `## Tier name` heading above it"
            )
            continue
        _read_keys(section, _PHASE_KEYS, reader, section.line + 1)
        tier = tiers[-1]
        phase = _phase(section, len(tiers), len(tier["phases"]) + 1, reader, seen, categories)
        tier["phases"].append(phase)
    for tier, line in zip(tiers, tier_lines, strict=True):
        if not tier["phases"]:
            reader.error(line, f"tier {tier['name']!r} has no phases: add `### Phase name` headings under it")
    if not tiers and not any(s.level == 3 for s in sections):
        reader.error(len(lines) or 1, "no tiers: a plan needs `## Tier` headings with `### Phase` headings under them")
    plan["tiers"] = tiers
    if reader.problems:
        problems = [f"{source}:{line}: {message}" for line, message in sorted(reader.problems, key=lambda p: p[0])]
        raise ValidationErrors(problems, f"fix {source} at the lines named and run `doit new_run` again")
    return plan


def _plan_keys(top: _Section, reader: _Reader) -> dict[str, Any]:
    out: dict[str, Any] = {}
    keys = top.keys
    if "project_id" in keys:
        value, line = keys["project_id"]
        if value:
            out["project_id"] = value
        else:
            reader.error(line, "`project_id:` is empty")
    if "repo" in keys or "base" in keys:
        target: dict[str, Any] = {"repo": keys["repo"][0] if "repo" in keys else "."}
        if "base" in keys:
            target["base"] = keys["base"][0] or None
        out["target"] = target
    for key in ("safety_profile", "run_scope"):
        if key in keys:
            enum_value = _enum(reader, key, *keys[key])
            if enum_value:
                out[key] = enum_value
    agents = {}
    for role in ("builder", "auditor"):
        if role in keys:
            value, line = keys[role]
            if not value:
                reader.error(line, f"`{role}:` is empty: name a preset or give a command")
                continue
            agents[role] = {"command": value} if " " in value.strip() else value
    if agents:
        out["agents"] = agents
    return out


def _tier(section: _Section, number: int, reader: _Reader, seen: dict[str, tuple[str, int, bool]]) -> dict[str, Any]:
    tier_id = f"T{number}"
    if "id" in section.keys:
        tier_id = _ident(reader, "tier", *section.keys["id"]) or tier_id
    _unique(reader, seen, "tier", tier_id, section.keys.get("id", ("", section.line))[1], "id" not in section.keys)
    tier: dict[str, Any] = {"tier_id": tier_id, "name": section.title or tier_id}
    description = _text(section.text)
    if description:
        tier["description"] = description
    tier["phases"] = []
    return tier


def _phase(
    section: _Section,
    tier_number: int,
    number: int,
    reader: _Reader,
    seen: dict[str, tuple[str, int, bool]],
    categories: Collection[str] | None,
) -> dict[str, Any]:
    keys = section.keys
    phase_id = f"F{tier_number}.{number}"
    if "id" in keys:
        phase_id = _ident(reader, "phase", *keys["id"]) or phase_id
    _unique(reader, seen, "phase", phase_id, keys.get("id", ("", section.line))[1], "id" not in keys)
    phase: dict[str, Any] = {"phase_id": phase_id, "name": section.title or phase_id}
    description = _text(section.text)
    if description:
        phase["description"] = description
    if "category" in keys:
        value, line = keys["category"]
        if not value:
            reader.error(line, "`category:` is empty")
        elif categories is not None and value not in categories:
            close = difflib.get_close_matches(value, sorted(categories), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            reader.error(line, f"unknown category {value!r}{hint}")
        phase["task_category"] = value
    elif "category" not in section.misspelt:
        reader.error(
            section.line,
            f"phase {section.title!r} has no `category:` line (e.g. `category: feature_implementation`)",
        )
    for key, field_name in _PHASE_ENUM_FIELDS:
        if key in keys:
            enum_value = _enum(reader, key, *keys[key])
            if enum_value:
                phase[field_name] = enum_value
    scope: dict[str, list[str]] = {}
    if "scope" in keys:
        scope["allow"] = _globs(reader, "scope", *keys["scope"])
    if "deny" in keys:
        scope["deny"] = _globs(reader, "deny", *keys["deny"])
    if scope:
        phase["scope"] = scope
    if "allows" in keys:
        value, line = keys["allows"]
        names = [n.strip().strip("`") for n in value.split(",") if n.strip().strip("`")]
        if not names:
            reader.error(line, f"`allows:` names nothing: write {', '.join(_ENUMS['allows'])}")
        phase["allows"] = [n for n in names if _enum(reader, "allows", n, line)]
    return phase


def _unique(
    reader: _Reader, seen: dict[str, tuple[str, int, bool]], kind: str, ident: str, line: int, auto: bool
) -> None:
    """Ids are unique ignoring case (they name directories and tags); an automatic id
    counts too."""
    folded = ident.casefold()
    if folded not in seen:
        seen[folded] = (ident, line, auto)
        return
    first, at, first_auto = seen[folded]
    if first_auto:
        reader.error(line, f"{kind} id {ident!r} is the automatic id of the {kind} at line {at}; give one an `id:`")
    else:
        reader.error(line, f"duplicate {kind} id {ident!r} (first at line {at}, as {first!r})")


# --------------------------------------------------------------------------- rendering


def render_markdown(plan: dict[str, Any]) -> str:
    """Plan data as a markdown plan that `parse_markdown` reads back to the same data (for
    what markdown can say: ids, names, descriptions, category, complexity, mode, scope,
    allows)."""
    out: list[str] = []
    description = str(plan.get("description") or "")
    title, body = _split_title(description)
    if title:
        out.append(f"# {title}")
    keys: list[str] = []
    if plan.get("project_id"):
        keys.append(f"project_id: {plan['project_id']}")
    target = plan.get("target")
    if isinstance(target, dict):
        keys.append(f"repo: {target.get('repo') or '.'}")
        if target.get("base"):
            keys.append(f"base: {target['base']}")
    for key in ("safety_profile", "run_scope"):
        if plan.get(key):
            keys.append(f"{key}: {plan[key]}")
    agents = plan.get("agents")
    if isinstance(agents, dict):
        for role in ("builder", "auditor"):
            agent = agents.get(role)
            if isinstance(agent, dict) and agent.get("command"):
                keys.append(f"{role}: {agent['command']}")
            elif isinstance(agent, str):
                keys.append(f"{role}: {agent}")
    out += keys
    if body:
        if out:
            out.append("")
        out.append(body)
    for t, tier in enumerate(plan.get("tiers") or [], start=1):
        out += ["", f"## {tier['name']}"]
        if tier.get("tier_id") != f"T{t}":
            out.append(f"id: {tier['tier_id']}")
        if tier.get("description"):
            out += ["", str(tier["description"]).strip("\n")]
        for p, phase in enumerate(tier.get("phases") or [], start=1):
            out += ["", f"### {phase['name']}"]
            if phase.get("phase_id") != f"F{t}.{p}":
                out.append(f"id: {phase['phase_id']}")
            out.append(f"category: {phase['task_category']}")
            for key, field_name in _PHASE_ENUM_FIELDS:
                if phase.get(field_name):
                    out.append(f"{key}: {phase[field_name]}")
            scope = phase.get("scope")
            if isinstance(scope, dict):
                if scope.get("allow"):
                    out.append(f"scope: {', '.join(scope['allow'])}")
                if scope.get("deny"):
                    out.append(f"deny: {', '.join(scope['deny'])}")
            if phase.get("allows"):
                out.append(f"allows: {', '.join(phase['allows'])}")
            if phase.get("description"):
                out += ["", str(phase["description"]).strip("\n")]
    return "\n".join(out).lstrip("\n") + "\n"


def _split_title(description: str) -> tuple[str, str]:
    """(title, body): the first line is a title when the rest is a separate paragraph."""
    text = description.strip("\n")
    if not text:
        return "", ""
    first, sep, rest = text.partition("\n")
    if not sep:
        return first, ""
    if rest.startswith("\n"):
        return first, rest.strip("\n")
    return "", text
