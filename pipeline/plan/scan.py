"""`doit catalog_scan`: evaluate a candidate repository for the feature catalog.

Curation is a separate, person-reviewed task, never part of a zero-intervention run
(docs/architecture.md, Reuse). It reads a local clone only — a network URL is refused, since nothing here
clones or scrapes — and writes `catalog/candidates/<feature>-<name>.yaml`: the evidence, the
scores, a verdict (accept / review / reject with reasons) and a `source:` entry ready to be
copied under the feature in catalog/features.yaml.

Evidence: the SPDX licence of its licence file (text fingerprints, pipeline.policy.licences); the
last commit (pipeline.vcs.adapter); its tests, and with `--run-tests` their pass rate (pytest via
pipeline.core.proc, with a timeout); its size; how well its README and files match the feature's
description (token overlap); stars and the like from an optional JSON file a person provides.
Running a foreign test suite executes its code: that is why it is opt-in.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypedDict, Unpack
from urllib.parse import unquote, urlparse

from pipeline.config import catalog as catalog_files
from pipeline.config.workspace import Workspace
from pipeline.core import proc, yamlio
from pipeline.core.errors import InvalidInput
from pipeline.core.jsonio import write_text_atomic
from pipeline.core.schemas import did_you_mean
from pipeline.gate.tampering import is_test_file
from pipeline.models.catalog import (
    CandidateReport,
    CandidateScores,
    CandidateSource,
    Catalog,
    MatchEvidence,
    SizeEvidence,
    TestEvidence,
)
from pipeline.policy import licences
from pipeline.vcs.local import LocalGitCli

_NETWORK = re.compile(r"^(?:https?|ssh|git|ftp)://|^[\w.-]+@[\w.-]+:")
_SKIP_DIRS = frozenset(
    {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox", ".mypy_cache", ".pytest_cache"}
)
_LICENCE_NAMES = ("LICENSE", "LICENCE", "COPYING", "UNLICENSE")
_MAX_TEXT_BYTES = 1 << 20  # larger files count for size, not for lines or matching
_MAX_MATCH_FILES = 2000
_README = re.compile(r"^readme(?:\.[a-z]+)?$", re.IGNORECASE)
_SUMMARY = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)")
_WORD = re.compile(r"[A-Za-z][a-z]+|[A-Z]+(?![a-z])|\d+")
_STOP_WORDS = """
    the and for with from into onto that this these those their there then than when what which while
    are was were been being has have had having its not but all any each per via use used uses
    using can could should would will may might must also only more most such other own same some
    very just over under out off too our your you they them who whom how why where here both either
    project projects feature features code file files data value values new one two add adds added
"""
_STOP = frozenset(_STOP_WORDS.split())

ACTIVE_DAYS = 180  # a commit this recent scores full activity


@dataclass(frozen=True)
class _Tree:
    files: list[Path]
    texts: dict[Path, str]
    bytes: int


def resolve_repo(workspace: Path, repo: str) -> Path:
    """The local directory `repo` names (a path or a file:// URL); a network URL is refused."""
    if repo.startswith("file://"):
        path = Path(unquote(urlparse(repo).path))
    elif _NETWORK.match(repo):
        raise InvalidInput(
            f"{repo}: cloning over the network is not available here; catalog_scan reads local clones only",
            f"clone it yourself (`git clone {repo} /tmp/candidate`) and pass --repo /tmp/candidate",
        )
    else:
        path = Path(repo) if Path(repo).is_absolute() else Path(workspace) / repo
    if not path.is_dir():
        raise InvalidInput(f"{path}: no such directory", "pass the path of a local clone (or a file:// URL)")
    return path.resolve()


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path


def _read_tree(root: Path) -> _Tree:
    files: list[Path] = []
    texts: dict[Path, str] = {}
    total = 0
    for path in _walk(root):
        files.append(path)
        size = path.stat().st_size
        total += size
        if size <= _MAX_TEXT_BYTES:
            with contextlib.suppress(UnicodeDecodeError):
                texts[path] = path.read_bytes().decode("utf-8")
    return _Tree(files, texts, total)


# --------------------------------------------------------------------------- evidence


def _licence(root: Path, tree: _Tree) -> tuple[str | None, str | None, list[str]]:
    """(licence file, SPDX expression, notes) from the licence files at the top."""
    notes: list[str] = []
    found: list[tuple[str, str | None]] = []
    for path in tree.files:
        if path.parent == root and path.name.upper().startswith(_LICENCE_NAMES):
            found.append((path.name, licences.identify_text(tree.texts.get(path, ""))))
    ids = sorted({spdx for _, spdx in found if spdx})
    unknown = [name for name, spdx in found if not spdx]
    if unknown:
        notes.append(f"licence file(s) {', '.join(unknown)} not recognised")
    if ids:
        return found[0][0], " OR ".join(ids), notes
    declared = _declared_licence(root)
    if declared:
        notes.append(f"no licence file; pyproject.toml declares {declared} (a copy must ship the licence text)")
        return None, declared, notes
    return (found[0][0] if found else None), None, notes


def _declared_licence(root: Path) -> str | None:
    path = root / "pyproject.toml"
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    value = data.get("project", {}).get("license")
    if isinstance(value, dict):
        value = value.get("text")
    if isinstance(value, str) and value.strip() and len(value) < 80:
        return licences.normalise_id(value)
    return None


def _activity(root: Path, tree: _Tree, notes: list[str]) -> tuple[date | None, str | None]:
    """(date of the last commit, its sha); file times when it is not a git clone."""
    if (root / ".git").exists():
        last = LocalGitCli(root).last_commit()
        if last is None:
            notes.append("the repository has no commits")
            return None, None
        sha, when = last
        return datetime.fromisoformat(when).date(), sha
    notes.append("not a git clone: activity estimated from file modification times")
    if not tree.files:
        return None, None
    newest = max(p.stat().st_mtime for p in tree.files)
    return datetime.fromtimestamp(newest).date(), None  # local, like date.today()


def _tests(root: Path, tree: _Tree, run: bool, timeout_s: int) -> TestEvidence:
    test_files = [p for p in tree.files if is_test_file(p.relative_to(root).as_posix())]
    present = bool(test_files)
    if not run or not present:
        return TestEvidence(present=present, test_files=len(test_files))
    env = proc.scrubbed_env(extra={"PYTHONDONTWRITEBYTECODE": "1"})
    res = proc.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="],
        cwd=root,
        env=env,
        timeout_s=timeout_s,
    )
    if res.timed_out:
        return TestEvidence(
            present=True, test_files=len(test_files), ran=True, timed_out=True, summary=f"timed out after {timeout_s} s"
        )
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    summary = ""
    for line in reversed((res.stdout + res.stderr).splitlines()):
        found = _SUMMARY.findall(line)
        if found:
            summary = line.strip(" =")
            for number, kind in found:
                key = "errors" if kind.startswith("error") else kind
                if key in counts:
                    counts[key] += int(number)
            break
    if not summary:
        tail = (res.stdout + res.stderr).strip().splitlines()[-1:] or [f"rc {res.returncode}"]
        summary = tail[0].strip(" =")
    judged = counts["passed"] + counts["failed"] + counts["errors"]
    return TestEvidence(
        present=True,
        test_files=len(test_files),
        ran=True,
        passed=counts["passed"],
        failed=counts["failed"],
        errors=counts["errors"],
        skipped=counts["skipped"],
        pass_rate=round(counts["passed"] / judged, 4) if judged else None,
        summary=summary,
    )


def terms(text: str) -> set[str]:
    """The words of `text` worth matching: identifiers split, lower case, no stop words."""
    out: set[str] = set()
    for word in _WORD.findall(text):
        lowered = word.lower()
        if len(lowered) < 3 or lowered.isdigit() or lowered in _STOP:
            continue
        if len(lowered) > 4 and lowered.endswith("s") and not lowered.endswith("ss"):
            lowered = lowered[:-1]
        out.add(lowered)
    return out


def match_score(feature_text: str, root: Path, tree: _Tree) -> MatchEvidence:
    """Share of the feature description's terms found in the README, paths and code."""
    wanted = terms(feature_text)
    have: set[str] = set()
    for path in tree.files[:_MAX_MATCH_FILES]:
        rel = path.relative_to(root).as_posix()
        have |= terms(rel.replace("/", " ").replace(".", " "))
        text = tree.texts.get(path)
        if text is not None:
            have |= terms(text if _README.match(path.name) else text[:65536])
    matched = sorted(wanted & have)
    score = round(len(matched) / len(wanted), 4) if wanted else 0.0
    return MatchEvidence(score=score, matched=matched, missing=sorted(wanted - have))


def load_metadata(path: str | None) -> dict[str, str | int | float | bool | None]:
    """Scalars of a provided JSON object (stars, forks, url, ...); never fetched."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InvalidInput(f"{path}: file not found", "pass a JSON file with --metadata, or leave it out") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: not valid JSON ({exc})", 'write an object, e.g. {"stars": 1200}') from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: expected a JSON object", 'write an object, e.g. {"stars": 1200, "url": "..."}')
    aliases = {
        "stargazers_count": "stars",
        "forks_count": "forks",
        "html_url": "url",
        "open_issues_count": "open_issues",
    }
    out: dict[str, str | int | float | bool | None] = {}
    for key, value in data.items():
        if value is None or isinstance(value, str | int | float | bool):
            out[aliases.get(str(key), str(key))] = value
    return out


# --------------------------------------------------------------------------- scoring


def _activity_score(days: int | None, max_days: int) -> float:
    if days is None:
        return 0.0
    if days <= ACTIVE_DAYS:
        return 1.0
    if days >= max_days:
        return 0.0
    return round(1.0 - (days - ACTIVE_DAYS) / (max_days - ACTIVE_DAYS), 4)


def _tests_score(tests: TestEvidence) -> float:
    if not tests.present:
        return 0.0
    if not tests.ran:
        return 0.5
    if tests.pass_rate is None:
        return 0.25
    return tests.pass_rate


def _popularity(metadata: dict[str, Any]) -> float:
    stars = metadata.get("stars")
    if isinstance(stars, bool) or not isinstance(stars, int | float) or stars < 0:
        return 0.5  # unknown: neither helps nor hurts
    return round(min(1.0, math.log10(stars + 1) / 4), 4)


def candidate_name(root: Path, name: str | None) -> str:
    raw = name or root.name
    cleaned = re.sub(r"[^a-z0-9_]+", "_", raw.lower()).strip("_")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"repo_{cleaned}".rstrip("_")
    return cleaned[:64]


def scan(
    workspace: Path,
    repo: str,
    feature: str,
    *,
    run_tests: bool = False,
    metadata: str | None = None,
    name: str | None = None,
    timeout_s: int = 300,
    today: date | None = None,
) -> CandidateReport:
    """Evaluate the clone at `repo` as a source of catalog feature `feature`."""
    cat = Workspace.of(workspace).catalog.catalog
    if feature not in cat.features:
        known = sorted(cat.features)
        raise InvalidInput(
            f"unknown feature {feature!r}{did_you_mean(feature, known)}",
            f"use a catalog feature ({', '.join(known)}) or add it to catalog/features.yaml first",
        )
    root = resolve_repo(workspace, repo)
    meta = load_metadata(metadata)
    return _evaluate(cat, feature, root, meta, run_tests, timeout_s, name, today or date.today())


def _evaluate(
    cat: Catalog,
    feature: str,
    root: Path,
    meta: dict[str, str | int | float | bool | None],
    run_tests: bool,
    timeout_s: int,
    name: str | None,
    today: date,
) -> CandidateReport:
    th = cat.thresholds
    tree = _read_tree(root)
    notes: list[str] = []
    licence_file, spdx, licence_notes = _licence(root, tree)
    notes += licence_notes
    last, sha = _activity(root, tree, notes)
    tests = _tests(root, tree, run_tests, timeout_s)
    spec = cat.features[feature]
    match = match_score(f"{feature.replace('_', ' ')} {spec.description}", root, tree)
    idle = (today - last).days if last else None
    allowed = bool(spdx) and licences.expression_allowed(spdx or "", cat.licence_policy.allowed)
    scores = _scores(tree, root, tests, idle, meta, allowed, th.max_inactive_days)
    verdict, reasons = _verdict(
        spdx, allowed, licence_file, tests, idle, match.score, scores.quality, meta, cat, notes
    )
    url = meta.get("url")
    source = CandidateSource(
        id=candidate_name(root, name),
        repo=url if isinstance(url, str) and url else root.as_uri(),
        path="",
        licence=spdx if spdx and re.fullmatch(r"[A-Za-z0-9.+-]+(?: OR [A-Za-z0-9.+-]+)*", spdx) else "NOASSERTION",
        quality_score=scores.quality,
        last_activity=(last or today).isoformat(),
        has_tests=tests.present,
        compatible_stacks=[],
        match=match.score,
        commit=sha,
        adapt="",
        stars=meta["stars"] if isinstance(meta.get("stars"), int) and not isinstance(meta.get("stars"), bool) else None,
        notes="written by catalog_scan; set compatible_stacks and adapt before copying it into the catalog",
    )
    return CandidateReport(
        feature=feature,
        scanned_on=today.isoformat(),
        scanned_path=str(root),
        verdict=verdict,
        reasons=reasons,
        licence_file=licence_file,
        licence_detected=spdx,
        last_commit=last.isoformat() if last else None,
        last_commit_sha=sha,
        tests=tests,
        size=SizeEvidence(
            files=len(tree.files), text_lines=sum(t.count("\n") for t in tree.texts.values()), bytes=tree.bytes
        ),
        match=match,
        metadata=meta,
        scores=scores,
        source=source,
    )


def _scores(
    tree: _Tree,
    root: Path,
    tests: TestEvidence,
    idle: int | None,
    meta: dict[str, Any],
    allowed: bool,
    max_days: int,
) -> CandidateScores:
    activity = _activity_score(idle, max_days)
    tests_score = _tests_score(tests)
    popularity = _popularity(meta)
    docs = 1.0 if any(p.parent == root and _README.match(p.name) for p in tree.files) else 0.0
    quality = round(0.35 * tests_score + 0.30 * activity + 0.20 * popularity + 0.15 * docs, 2)
    return CandidateScores(
        licence=1.0 if allowed else 0.0,
        activity=activity,
        tests=tests_score,
        popularity=popularity,
        docs=docs,
        quality=quality,
    )


def _verdict(
    spdx: str | None,
    allowed: bool,
    licence_file: str | None,
    tests: TestEvidence,
    idle: int | None,
    match: float,
    quality: float,
    meta: dict[str, Any],
    cat: Catalog,
    notes: list[str],
) -> tuple[str, list[str]]:
    th = cat.thresholds
    reject: list[str] = []
    review: list[str] = []
    if spdx is None:
        reject.append("no licence found: all rights reserved, the code cannot be reused")
    elif not allowed:
        allowed_ids = ", ".join(cat.licence_policy.allowed)
        reject.append(f"licence {spdx} is refused in zero-intervention runs (allowed: {allowed_ids})")
    elif licence_file is None:
        review.append(f"licence {spdx} is only declared, no licence file to ship with copied code")
    declared = meta.get("license") or meta.get("licence") or meta.get("spdx_id")
    if isinstance(declared, str) and spdx and licences.normalise_id(declared) not in licences.expression_ids(spdx):
        review.append(f"metadata says licence {declared}, the licence file says {spdx}")
    if meta.get("archived") is True:
        reject.append("the repository is archived")
    if quality < th.min_quality_score:
        review.append(f"quality {quality:.2f} is below the threshold {th.min_quality_score}")
    if th.require_tests and not tests.present:
        review.append("no tests found; the catalog requires tests")
    if tests.ran and tests.timed_out:
        review.append("its tests timed out")
    elif tests.ran and (tests.pass_rate is None or tests.pass_rate < 1.0):
        rate = "no test ran" if tests.pass_rate is None else f"pass rate {tests.pass_rate:.0%}"
        review.append(f"its tests do not all pass ({rate}: {tests.summary})")
    if idle is None:
        review.append("last activity unknown")
    elif idle > th.max_inactive_days:
        review.append(f"no commit for {idle} days (at most {th.max_inactive_days})")
    if match < th.extract_match:
        review.append(f"match {match:.0%} is below {th.extract_match:.0%}: it would be planned as greenfield")
    reasons = [*reject, *review, *notes]
    if reject:
        return "reject", reasons
    return ("review" if review else "accept"), reasons


def candidate_path(workspace: Path, report: CandidateReport) -> Path:
    return Path(workspace) / catalog_files.CANDIDATES_DIR / f"{report.feature}-{report.source.id}.yaml"


class ScanOptions(TypedDict, total=False):
    """`scan`'s keyword options, passed on as given (the defaults are `scan`'s)."""

    run_tests: bool
    metadata: str | None
    name: str | None
    timeout_s: int
    today: date | None


def scan_to_file(
    workspace: Path, repo: str, feature: str, **options: Unpack[ScanOptions]
) -> tuple[CandidateReport, Path]:
    """`scan`, then write the candidate file for a person to review."""
    report = scan(workspace, repo, feature, **options)
    path = candidate_path(workspace, report)
    header = (
        f"Candidate source for feature {report.feature}, scanned {report.scanned_on}: verdict {report.verdict}.\n"
        "Review the evidence; to use it, copy `source:` under features."
        f"{report.feature}.sources in catalog/features.yaml\n"
        "(set compatible_stacks and adapt), then `doit validate`."
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yamlio.dump_new(report.model_dump(mode="json"), header))
    return report, path
