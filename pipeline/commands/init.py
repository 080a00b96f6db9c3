"""`python -m pipeline init`: adopt Autopack in a repository.

Scaffolds what a workspace needs (docs/architecture.md, Code map): `profiles/` (ruleset.yaml, ci.yaml,
agents.yaml, every override commented out), `catalog/`, `runs/`, `reports/`, a `dodo.py`
that loads the tasks from the installed package, a `doit.cfg` registering the `run`
command plugin (so `doit run --run R` reaches the run task), and the `.gitignore` entries
a workspace needs.

Nothing that exists is overwritten: an existing file is skipped (and the report says what
to add to it by hand), and `.gitignore` only gets the lines it lacks, appended. Running
init twice changes nothing.

doit reads `pyproject.toml` ([tool.doit]) and `doit.cfg` (INI) from the current directory
(doit 0.36/0.37 `DoitMain(config_filenames=('pyproject.toml', 'doit.cfg'))`): init writes
`doit.cfg`, so a project's own pyproject.toml is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.errors import AutopackError, InvalidInput
from pipeline.core.jsonio import write_text_atomic
from pipeline.vcs.local import LocalGitCli

GITIGNORE_LINES: tuple[str, ...] = (
    ".doit.db*",  # doit's dependency cache: a cache, the files are the record
    ".autopack/",  # the runs' linked worktrees
    "runs/*/.lock",  # the run lock
    "runs/*/**/*.tmp.*",  # atomic-write temp files of a killed process
    "reports/project_issue_backlog.json",  # derived from runs/ at every start_run
    ".aider*",  # aider's chat history and repo-map cache, if the aider preset is used
)
GITIGNORE_HEADER = "# Autopack (python -m pipeline init)"

DODO = '''\
"""doit entry point for Autopack: the tasks live in the installed package.

`doit list` shows them; `autopack <task>` runs the same tasks from anywhere.
"""

from autopack_tasks import *  # noqa: F403
from autopack_tasks import DOIT_CONFIG  # noqa: F401
'''

DOIT_CFG = """\
# doit configuration (read from the current directory by doit).
# `doit run --run R` must reach Autopack's run task, not doit's own `run` command.
[COMMAND]
run = autopack_tasks:RunCommand
"""

RULESET = """\
# Project overrides of Autopack's ruleset, merged key by key over the
# built-in ruleset (pipeline/data/ruleset.yaml in the installed package). State only what
# you change; a list replaces the built-in list. `doit validate` checks this file and
# `doit strategy --run R` shows where every value of a run came from. Examples:
#
# run_budgets:
#   token_cap: 2000000            # tokens per run (built-in: 5,000,000)
#   max_duration_minutes: 60      # active minutes per run (built-in: 120)
#
# categories:
#   bugfix:
#     max_builder_attempts: 2     # fewer builder attempts for bug fixes
#
# on_policy_violation: retry      # hand a scope breach back to the builder (built-in: fail_run)
# debt_cleanup: auto              # add debt_cleanup phases for aged minor issues at start_run
#
# protected_paths:                # never written by a builder (a list: repeat the built-ins you keep)
#   - ".git/"
#   - "runs/"
#   - ".github/workflows/"
#   - "profiles/"
#   - "dodo.py"
#   - "deploy/"
"""

CI = """\
# Project CI profiles, merged over the built-in ones
# (pipeline/data/ci.yaml: `normal` runs pytest, `strict` also compiles every file). A
# plan's `ci:` section overrides these per run. A list (steps) replaces the built-in list.
# `{junit}` in `run` becomes the (shell-quoted) path of the step's JUnit XML report.
# Examples:
#
# normal:
#   steps:
#     - {name: tests, run: "python -m pytest -q -p no:cacheprovider --junitxml={junit}", timeout_s: 900}
#     - {name: lint, run: "ruff check .", timeout_s: 300}
#
# strict:
#   static_checks:
#     - {name: types, run: "mypy .", timeout_s: 600}
"""

AGENTS = """\
# Agent presets, merged field by field over the built-in ones
# (pipeline/data/agents.yaml: claude, codex, aider, gemini, opencode, cursor, command).
# A plan uses one as `builder: claude` or `builder: {preset: claude, model: sonnet,
# max_turns: 20}`. The lists env and owned_files add to the built-in preset's. Examples:
#
# claude:
#   defaults: {max_turns: 60}
#   env: [MY_GATEWAY_TOKEN]               # passed to claude on top of the preset's names
#
# my-agent:                               # a CLI of your own
#   executable: my-agent                  # checked on PATH before running
#   command: my-agent --prompt-file {spec} --json
#   prompt: file                          # argument ({prompt}) | file ({spec}) | stdin | env
#   usage: none                           # it writes $AUTOPACK_RESULT with its usage
#   env: [MY_AGENT_TOKEN]
#   install: pip install my-agent
"""

KEEP = ""  # an empty .gitkeep keeps an otherwise empty directory in git

# path -> content, in the order they are reported
FILES: tuple[tuple[str, str], ...] = (
    ("profiles/ruleset.yaml", RULESET),
    ("profiles/ci.yaml", CI),
    ("profiles/agents.yaml", AGENTS),
    ("catalog/.gitkeep", KEEP),
    ("runs/.gitkeep", KEEP),
    ("reports/.gitkeep", KEEP),
    ("dodo.py", DODO),
    ("doit.cfg", DOIT_CFG),
)

# What to add by hand when a file of the user's already exists.
_BY_HAND: dict[str, str] = {
    "dodo.py": (
        "add `from autopack_tasks import *` and `from autopack_tasks import DOIT_CONFIG` to it"
    ),
    "doit.cfg": "add `run = autopack_tasks:RunCommand` under a `[COMMAND]` section",
}


@dataclass(frozen=True)
class InitReport:
    """What init did: paths relative to the workspace."""

    workspace: Path
    created: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why / what to do)
    appended: list[str] = field(default_factory=list)  # lines added to .gitignore
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"created {p}" for p in self.created]
        lines += [f"skipped {p}: {why}" for p, why in self.skipped]
        if self.appended:
            lines.append(f"appended to .gitignore: {', '.join(self.appended)}")
        if not self.created and not self.appended:
            lines.append("nothing to do: the workspace is already set up")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def init_workspace(workspace: Path) -> InitReport:
    """Scaffold `workspace` for Autopack; never overwrites a file."""
    workspace = Path(workspace)
    if not workspace.is_dir():
        raise InvalidInput(f"{workspace} is not a directory", "run init in your repository's checkout")
    report = InitReport(workspace)
    for rel, content in FILES:
        path = workspace / rel
        if path.exists() or path.is_symlink():
            why = "exists, left as it is"
            if rel in _BY_HAND:
                why += "; " + _BY_HAND[rel]
            report.skipped.append((rel, why))
            continue
        write_text_atomic(path, content)
        report.created.append(rel)
    report.appended.extend(_extend_gitignore(workspace / ".gitignore"))
    try:
        LocalGitCli(workspace).toplevel()
    except AutopackError:
        report.notes.append(
            f"{workspace} is not a git repository: runs need one; `git init` here, or set "
            "`target.repo` in each plan to the checkout the agents change"
        )
    report.notes.append("next: `doit new_run --run R`, edit runs/R/plan.yaml, then `doit start_run --run R`")
    return report


def _extend_gitignore(path: Path) -> list[str]:
    """Append the lines `.gitignore` lacks (the whole file if it is missing)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    present = {line.strip() for line in text.splitlines()}
    missing = [line for line in GITIGNORE_LINES if line not in present]
    if not missing:
        return []
    block = ([GITIGNORE_HEADER] if GITIGNORE_HEADER not in present else []) + missing
    sep = "" if not text or text.endswith("\n") else "\n"
    gap = "\n" if text.strip() else ""
    write_text_atomic(path, text + sep + gap + "\n".join(block) + "\n")
    return missing
