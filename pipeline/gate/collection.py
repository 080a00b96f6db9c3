"""The gate's collection check: which tests pytest would run, on the base and the candidate.

The AST and line checks (`behaviour`, `tampering`) judge test code; this one judges the
outcome, whatever the mechanism. The phase's test command (the first CI step that runs
`pytest` or `python -m pytest`) is run with `--collect-only` and a plugin of ours
(`collect_plugin.py`, copied into a directory the step cannot write and loaded with `-p`)
that lists every collected node id with its skip/xfail markers evaluated, and the
deselected ones. A test that ran on the base and, in the candidate, is missing, skipped,
xfailed or deselected is tampering (check `test_collection`), unless the phase may change
its tests. A test made parametrised, parameter ids renamed and test files renamed by the
patch are matched up; new tests are welcome.

Cost: it runs only when the CI profile runs pytest and the patch touches a Python file or
pytest's configuration; the base's collection is cached per base commit, command and
plugin version in the workspace's git-ignored `.autopack/collections/`, so a retry
collects only the candidate. Both collections run in the sandbox of CI steps, with a
timeout and the log capped; the candidate's output is hostile (bounded, validated), and a
candidate that crashes collection where the base collected is refused with the reason.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import shlex
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core import failpoints, proc, sandbox
from pipeline.core.errors import InvalidInput
from pipeline.core.inputs import MIB, read_utf8
from pipeline.core.jsonio import canonical_json, write_json_atomic
from pipeline.core.masking import mask_file, masked
from pipeline.gate.evidence import gate_check
from pipeline.gate.patch import ParsedPatch, PatchParseError, parse_patch
from pipeline.gate.tampering import TEST_CATEGORIES
from pipeline.models.plan import CiStep
from pipeline.models.reports import GateCheck
from pipeline.models.strategy import PhaseStrategy

CHECK = "test_collection"
PLUGIN_MODULE = "autopack_collect_plugin"
OUT_ENV = "AUTOPACK_COLLECT_OUT"
CACHE_DIR = Path(".autopack") / "collections"
PYTEST_CONFIG = frozenset({"conftest.py", "pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini"})
MAX_OUTPUT_BYTES = 16 * MIB
MAX_TESTS = 200_000
MAX_ID_CHARS = 4_000
MAX_TIMEOUT_S = 600
_LOG_TAIL_LINES = 15
_STATES = frozenset({"run", "skip", "xfail"})
_PLUGIN_SOURCE = Path(__file__).with_name("collect_plugin.py")
# Options whose selection depends on pytest's cache (off during collection) or that only
# write reports: dropped from the collection command.
_DROP = frozenset(
    {
        "--lf",
        "--last-failed",
        "--ff",
        "--failed-first",
        "--nf",
        "--new-first",
        "--sw",
        "--stepwise",
        "--sw-skip",
        "--stepwise-skip",
        "--cache-clear",
    }
)
_DROP_WITH_VALUE = frozenset({"--junitxml", "--junit-xml", "--junit-prefix", "--lfnf", "--last-failed-no-failures"})
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PYTHON = re.compile(r"^python(?:\d+(?:\.\d+)?)?$")


def plugin_version() -> str:
    """The plugin's content hash: a cached collection is one this plugin made."""
    return hashlib.sha256(_PLUGIN_SOURCE.read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class PytestCommand:
    """The collection command derived from a CI step (a shell line, run in the worktree)."""

    step: str
    line: str
    timeout_s: int


@dataclass(frozen=True)
class Collection:
    """One collection: node id -> run/skip/xfail, the deselected ids, collection errors;
    `problem` when there is no usable result at all (crash, timeout, unreadable output)."""

    tests: Mapping[str, str] = field(default_factory=dict)
    deselected: frozenset[str] = frozenset()
    errors: tuple[str, ...] = ()
    problem: str | None = None
    cached: bool = False

    @property
    def clean(self) -> bool:
        return self.problem is None and not self.errors


@dataclass(frozen=True)
class CollectionJob:
    """What the gate's check needs: the command and the base's collection, or why the check
    does not run for this phase."""

    command: PytestCommand | None = None
    base: Collection | None = None
    why_not: str = ""
    confinement: sandbox.Confinement = sandbox.UNCONFINED
    log_dir: Path | None = None


def prepare(
    *,
    enabled: bool,
    steps: Sequence[CiStep],
    patch_text: str,
    phase: PhaseStrategy,
    worktree: Path,
    confinement: sandbox.Confinement,
    cache_dir: Path,
    base_commit: str,
    log_dir: Path,
) -> CollectionJob:
    """Before `apply` (the worktree holds the base): whether the check runs for this patch,
    and the base's collection when it does (from the cache, or collected now: then the
    caller puts the worktree back to the base, in case collection left anything)."""
    if not enabled:
        return CollectionJob(why_not="switched off by the ruleset (gate.test_collection: false)")
    if phase.tests_may_change or phase.task_category in TEST_CATEGORIES:
        return CollectionJob(why_not="the phase may change its tests")
    command = find_command(steps)
    if isinstance(command, str):
        return CollectionJob(why_not=command)
    try:
        patch = parse_patch(patch_text)
    except PatchParseError:
        return CollectionJob(why_not="the patch does not parse")
    if not relevant(patch):
        return CollectionJob(why_not="the patch touches no Python file and no pytest configuration")
    base = base_collection(command, worktree, confinement, cache_dir, base_commit, log_dir / "collection-base.log")
    return CollectionJob(command, base, confinement=confinement, log_dir=log_dir)


# -- the command ------------------------------------------------------------------------------


def find_command(steps: Sequence[CiStep]) -> PytestCommand | str:
    """The collection command of the first CI step that runs pytest, or why there is none."""
    reasons = []
    for step in steps:
        found = _pytest_line(step.run)
        if isinstance(found, str):
            reasons.append(f"{step.name}: {found}")
            continue
        line = shlex.join([*found, "--collect-only", "-q", "-p", PLUGIN_MODULE, "-p", "no:cacheprovider"])
        return PytestCommand(step.name, line, min(step.timeout_s, MAX_TIMEOUT_S))
    detail = "; ".join(reasons) if reasons else "the profile has no steps"
    return f"collection is supported for pytest steps only (`pytest ...`, `python -m pytest ...`): {detail}"


def _pytest_line(run: str) -> list[str] | str:
    """The step's words without its report options, or why it is not a plain pytest command."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError as exc:
        return f"cannot read the command ({exc})"
    if any(w and all(c in "();<>|&" for c in w) for w in words):
        return "not one plain command (a shell list, pipe or redirection)"
    env = [w for w in words[: _first_command(words)] if _ASSIGNMENT.match(w)]
    argv = words[len(env) :]
    if not argv:
        return "no command"
    exe = posixpath.basename(argv[0])
    if exe in ("pytest", "py.test"):
        rest = argv[1:]
    elif _PYTHON.match(exe) and argv[1:3] == ["-m", "pytest"]:
        rest = argv[3:]
    else:
        return f"runs `{exe}`, not pytest"
    return [*env, *argv[: len(argv) - len(rest)], *_without_reports(rest)]


def _first_command(words: list[str]) -> int:
    n = 0
    while n < len(words) and _ASSIGNMENT.match(words[n]):
        n += 1
    return n


def _without_reports(args: list[str]) -> list[str]:
    kept: list[str] = []
    skip_next = False
    for word in args:
        if skip_next:
            skip_next = False
            continue
        name = word.split("=", 1)[0]
        if "{junit}" in word or name in _DROP:
            continue
        if name in _DROP_WITH_VALUE:
            skip_next = "=" not in word
            continue
        kept.append(word)
    return kept


def relevant(patch: ParsedPatch) -> bool:
    """Collection can change: the patch touches a Python file or pytest's configuration."""
    for fc in patch.files:
        for path in (fc.path, fc.old_path or fc.path):
            name = posixpath.basename(path)
            if name.endswith(".py") or name in PYTEST_CONFIG:
                return True
    return False


# -- running it ---------------------------------------------------------------------------------


def collect(command: PytestCommand, worktree: Path, confinement: sandbox.Confinement, log_path: Path) -> Collection:
    """Run the collection in the sandbox of CI steps; its log (masked) goes to `log_path`."""
    scratch = Path(tempfile.mkdtemp(prefix="autopack-collect-"))
    try:
        plugin_dir, out_dir = scratch / "plugin", scratch / "out"
        plugin_dir.mkdir()
        out_dir.mkdir()
        shutil.copyfile(_PLUGIN_SOURCE, plugin_dir / f"{PLUGIN_MODULE}.py")
        (plugin_dir / f"{PLUGIN_MODULE}.py").chmod(0o444)
        out = out_dir / "collection.json"
        env = proc.scrubbed_env()
        env.update(
            PYTHONPATH=":".join(p for p in (str(plugin_dir), env.get("PYTHONPATH", "")) if p),
            PYTHONDONTWRITEBYTECODE="1",
            **{OUT_ENV: str(out)},
        )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with confinement.jail(worktree, "ci", command.step, writable=[out_dir]) as jail:
            failpoints.hit("collection_running")
            res = sandbox.run(jail, command.line, cwd=worktree, env=env, timeout_s=command.timeout_s, log_path=log_path)
        mask_file(log_path)
        if res.timed_out:
            return Collection(problem=f"timed out after {command.timeout_s} s and was killed")
        return _read_output(out, res.returncode, masked(res.stdout))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _read_output(out: Path, returncode: int, log: str) -> Collection:
    tail = "\n".join(log.splitlines()[-_LOG_TAIL_LINES:]) or "(no output)"
    if not out.exists():
        return Collection(problem=f"pytest exited {returncode} without finishing collection; last lines:\n{tail}")
    try:
        data = json.loads(read_utf8(out, "collection result", MAX_OUTPUT_BYTES))
        found = parse_result(data)
    except (InvalidInput, ValueError) as exc:
        return Collection(problem=f"its collection result is unreadable ({str(exc)[:300]})")
    if returncode not in (0, 5) and not found.errors:  # 5: no tests collected
        return Collection(problem=f"pytest exited {returncode}; last lines:\n{tail}")
    return found


def parse_result(data: object) -> Collection:
    """The plugin's JSON, validated (ValueError for anything else: it may come from a liar)."""
    if not isinstance(data, dict) or data.get("format") != 1:
        raise ValueError("not a collection result of format 1")
    tests, deselected, errors = data.get("tests"), data.get("deselected"), data.get("errors")
    if not isinstance(tests, dict) or not isinstance(deselected, list) or not isinstance(errors, list):
        raise ValueError("tests, deselected or errors has the wrong type")
    if len(tests) + len(deselected) > MAX_TESTS or len(errors) > MAX_TESTS:
        raise ValueError(f"more than {MAX_TESTS} node ids")
    for key, how in tests.items():
        if not _node_id(key) or how not in _STATES:
            raise ValueError(f"a bad test entry {str(key)[:80]!r}: {str(how)[:20]!r}")
    if not all(_node_id(n) for n in deselected) or not all(isinstance(e, str) for e in errors):
        raise ValueError("a bad deselected id or error")
    return Collection(dict(tests), frozenset(deselected), tuple(e[:500] for e in errors))


def _node_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS and "\n" not in value


# -- the base's collection, cached ------------------------------------------------------------------


def cache_path(cache_dir: Path, base_commit: str, command: PytestCommand) -> Path:
    key = hashlib.sha256(f"{base_commit}\0{command.line}\0{plugin_version()}".encode()).hexdigest()
    return cache_dir / f"{key}.json"


def base_collection(
    command: PytestCommand,
    worktree: Path,
    confinement: sandbox.Confinement,
    cache_dir: Path,
    base_commit: str,
    log_path: Path,
) -> Collection:
    """The base's collection from the cache when a sound entry is there, else collected
    (the worktree must hold the base) and cached when clean."""
    path = cache_path(cache_dir, base_commit, command)
    hit = _cached(path, base_commit, command)
    if hit is not None:
        return hit
    found = collect(command, worktree, confinement, log_path)
    if found.clean:
        body = {
            "base_commit": base_commit,
            "command": command.line,
            "plugin": plugin_version(),
            "result": {"format": 1, "tests": dict(found.tests), "deselected": sorted(found.deselected), "errors": []},
        }
        write_json_atomic(path, {**body, "sha256": _digest(body)})
    return found


def _digest(body: object) -> str:
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def _cached(path: Path, base_commit: str, command: PytestCommand) -> Collection | None:
    """A cache entry that is whole and is of this base, command and plugin; else None."""
    if not path.exists():
        return None
    try:
        data = json.loads(read_utf8(path, "cached collection", MAX_OUTPUT_BYTES))
        if not isinstance(data, dict):
            return None
        body = {k: v for k, v in data.items() if k != "sha256"}
        expected = {"base_commit": base_commit, "command": command.line, "plugin": plugin_version()}
        if data.get("sha256") != _digest(body) or any(body.get(k) != v for k, v in expected.items()):
            return None
        found = parse_result(body.get("result"))
    except (InvalidInput, ValueError):
        return None
    return Collection(found.tests, found.deselected, found.errors, cached=True)


# -- judging ---------------------------------------------------------------------------------------


def check_collection(job: CollectionJob, patch: ParsedPatch, worktree: Path, may_change: str | None) -> GateCheck:
    """The gate check: the candidate (the worktree after `apply`) runs every test that ran
    on the base."""
    if may_change is not None:
        return gate_check(CHECK, True, f"tests may change ({may_change})")
    shadow = [p for p in patch.touched_paths if _shadows_plugin(p)]
    if shadow:
        return gate_check(CHECK, False, "the patch adds a module named like the gate's collection plugin", shadow)
    if job.command is None or job.base is None or job.log_dir is None:
        return gate_check(CHECK, True, f"not run: {job.why_not}")
    base = job.base
    if not base.clean:
        why = base.problem or f"{len(base.errors)} collection error(s)"
        return gate_check(CHECK, True, f"not compared: the base does not collect cleanly ({why})", base.errors)
    cand = collect(job.command, worktree, job.confinement, job.log_dir / "collection-candidate.log")
    if cand.problem is not None or cand.errors:
        message = f"collection fails on the candidate and did not on the base (`{job.command.step}`)"
        return gate_check(CHECK, False, message, [cand.problem] if cand.problem else cand.errors)
    found = compare(base, cand, renames(patch))
    source = "cached" if base.cached else "collected"
    if found:
        message = f"{len(found)} test(s) that ran on the base do not run in the candidate; fix the code, not the tests"
        return gate_check(CHECK, False, message, found)
    return gate_check(
        CHECK, True, f"{len(base.tests)} test(s) on the base ({source}), {len(cand.tests)} in the candidate: none lost"
    )


def _shadows_plugin(path: str) -> bool:
    parts = path.split("/")
    return PLUGIN_MODULE in parts or posixpath.basename(path).split(".")[0] == PLUGIN_MODULE


def renames(patch: ParsedPatch) -> dict[str, str]:
    return {fc.old_path: fc.path for fc in patch.files if fc.old_path and fc.status == "renamed"}


def compare(base: Collection, cand: Collection, moved: Mapping[str, str]) -> list[str]:
    """Every test that ran on the base and does not run in the candidate, with why."""
    ran = [_moved(t, moved) for t, how in sorted(base.tests.items()) if how == "run"]
    known = {_moved(t, moved) for t in base.tests}
    found: list[str] = []
    missing: dict[str, list[str]] = {}
    for test in ran:
        if test in cand.deselected:
            found.append(f"{test}: deselected")
        elif test in cand.tests:
            if cand.tests[test] != "run":
                found.append(f"{test}: {cand.tests[test]} now")
        else:
            missing.setdefault(_family(test), []).append(test)
    for family, tests in missing.items():
        new = [(t, how) for t, how in sorted(cand.tests.items()) if _family(t) == family and t not in known]
        if sum(1 for _t, how in new if how == "run") >= len(tests):
            continue  # made parametrised, or its parameter ids renamed
        others = [f"{t} ({how})" for t, how in new if how != "run"]
        why = f"collected now only as {', '.join(others[:3])}" if others else "no longer collected"
        found += [f"{t}: {why}" for t in tests]
    return sorted(found)


def _family(node_id: str) -> str:
    return node_id.split("[", 1)[0]


def _moved(node_id: str, moved: Mapping[str, str]) -> str:
    """The id of a test whose file the patch renamed, as the candidate names it (node ids
    are relative to pytest's rootdir, which may be below the repository's root)."""
    path, sep, rest = node_id.partition("::")
    for old, new in moved.items():
        if old == path:
            return new + sep + rest
        if old.endswith("/" + path):
            prefix = old[: -len(path)]
            if new.startswith(prefix):
                return new[len(prefix) :] + sep + rest
    return node_id
