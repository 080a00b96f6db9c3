"""Git features a patch may use only when its phase declares them (the plan's `allows:`).

- `submodules`: a gitlink (mode 160000) or a `.gitmodules` makes git fetch and check out
  code from elsewhere. Refused unless declared; even then every URL the patch writes into
  `.gitmodules` must be an `https://`, `http://`, `ssh://`, `git://` or scp-like
  `user@host:path` address: a transport helper (`ext::` runs a command, `fd::`, `file::`,
  any `<helper>::`), a `file://` URL, a local path (absolute, `~` or relative: outside the
  repository) and an address starting with `-` (an option to ssh) are refused, as are
  `update = !command` and submodule names or paths with a `..` component.
- `filters`: a `.gitattributes` line naming a `filter=` driver makes git rewrite a file
  when it is added, so what is committed differs from what the gate saw. Refused unless
  declared, naming the file and line.

`diff=` and `merge=` attributes only pick a driver from the git configuration, which an
agent cannot change (the guard restores it before any git command of the supervisor
runs) and the supervisor's diffs run with `--no-textconv --no-ext-diff`: they pass.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from pipeline.gate.patch import FileChange

GITLINK_MODE = "160000"
_SUBMODULE_FIX = (
    "autonomous phases may not add or change submodules unless the plan declares "
    "`allows: [submodules]` for the phase; otherwise make that change by hand"
)
_URL_FIX = "use an https:// or ssh:// URL of the submodule's repository"
_FILTER_FIX = (
    "a filter changes what is committed compared to what the gate saw: remove the "
    "`filter=` attribute, or declare `allows: [filters]` for the phase in the plan"
)

_KEY_VALUE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9-]*)\s*=\s*(.*?)\s*$")
_SECTION = re.compile(r"^\s*\[\s*submodule\s+\"(.*)\"\s*\]")
_SCHEME_URL = re.compile(r"^(?:https?|ssh|git|git\+ssh|ssh\+git)://([^/?#]*)", re.I)
_SCP_URL = re.compile(r"^(?:[A-Za-z0-9._-]+@)?([A-Za-z0-9][A-Za-z0-9.-]*):(?!//)\S+$")
_FILTER_ATTR = re.compile(r"(?:^|\s)filter=")


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def submodule_problems(fc: FileChange, allows: Collection[str]) -> list[str]:
    """What is wrong with `fc` as a submodule change (a gitlink, a `.gitmodules`)."""
    is_modules = any(_basename(p) == ".gitmodules" for p in fc.paths)
    if fc.new_mode != GITLINK_MODE and not is_modules:
        return []
    if "submodules" not in allows:
        what = "a gitlink (submodule commit)" if fc.new_mode == GITLINK_MODE else ".gitmodules"
        return [f"{fc.path}: {what}; {_SUBMODULE_FIX}"]
    if _basename(fc.path) != ".gitmodules" or fc.status == "deleted":
        return []
    if fc.is_binary or (fc.old_path is not None and fc.old_path != fc.path):
        return [f"{fc.path}: .gitmodules renamed, copied or binary: its content cannot be checked; write it as text"]
    return [f"{fc.path}:{line.number}: {why}" for line in fc.added_lines if (why := _modules_line(line.text))]


def _modules_line(text: str) -> str | None:
    """Why one added `.gitmodules` line is refused, or None."""
    stripped = text.strip()
    if stripped.endswith("\\"):
        return "a continued line (trailing backslash) hides what git reads; write the value on one line"
    section = _SECTION.match(text)
    if section and ".." in re.split(r"[/\\]", section.group(1)):
        return f"submodule name {section.group(1)!r} has a `..` component"
    found = _KEY_VALUE.match(text)
    if not found:
        return None
    key, value = found.group(1).lower(), found.group(2).strip('"')
    if key == "url":
        return _url_problem(value)
    if key == "update" and value.startswith("!"):
        return f"`update = {value}` runs a command; use checkout, rebase, merge or none"
    if key == "path" and ".." in re.split(r"[/\\]", value):
        return f"submodule path {value!r} has a `..` component"
    return None


def _url_problem(url: str) -> str | None:
    """None for a network URL git fetches without running anything of the patch's."""
    if "::" in url:
        return f"URL {url!r} names a transport helper (`ext::` runs a command); {_URL_FIX}"
    scheme = _SCHEME_URL.match(url)
    if scheme:
        host = scheme.group(1).rsplit("@", 1)[-1]
        if not host or host.startswith("-"):
            return f"URL {url!r} has no host or a host starting with `-`; {_URL_FIX}"
        return None
    scp = _SCP_URL.match(url)
    if scp and not url.startswith("-") and "/" not in url.split(":", 1)[0]:
        return None
    return f"URL {url!r} is a local path or an unknown transport; {_URL_FIX}"


def filter_problems(fc: FileChange, allows: Collection[str]) -> list[str]:
    """Added `.gitattributes` lines naming a `filter=` driver, unless the phase allows them."""
    if "filters" in allows or fc.status == "deleted":
        return []
    if _basename(fc.path) != ".gitattributes":
        return []
    if fc.is_binary or (fc.old_path is not None and fc.old_path != fc.path):
        return [f"{fc.path}: .gitattributes renamed, copied or binary: its content cannot be checked; write it as text"]
    return [
        f"{fc.path}:{line.number}: `{line.text.strip()[:120]}` names a filter driver; {_FILTER_FIX}"
        for line in fc.added_lines
        if not line.text.lstrip().startswith("#") and _FILTER_ATTR.search(line.text)
    ]
