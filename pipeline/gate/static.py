"""The gate's static checks: the CI profile's static steps run on the applied patch.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core import proc, sandbox
from pipeline.core.masking import mask_file, masked
from pipeline.gate.evidence import gate_check
from pipeline.models.plan import CiStep
from pipeline.models.reports import GateCheck

if TYPE_CHECKING:  # both cost tens of ms to import; a task that never gates skips them
    pass


STATIC_LOG_TAIL_LINES = 20


_JUNIT_PLACEHOLDER = "{junit}"


_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def check_static(
    steps: Sequence[CiStep],
    worktree: Path,
    log_dir: Path,
    confinement: sandbox.Confinement = sandbox.UNCONFINED,
) -> GateCheck:
    """Every static check runs (so the builder sees all failures at once); any red fails.
    Each runs in `confinement`'s sandbox (it runs the patch's code), writing only the
    worktree and `log_dir`; its log is kept with secrets masked."""
    if not steps:
        return gate_check("static_checks", True, "no static checks")
    log_dir = log_dir.resolve()  # steps run with cwd=worktree: paths handed over are absolute
    log_dir.mkdir(parents=True, exist_ok=True)
    env = proc.scrubbed_env()
    failed: list[str] = []
    evidence: list[str] = []
    used: set[str] = set()
    for step in steps:
        problem = _run_static(step, worktree, log_dir, env, used, confinement)
        if problem:
            failed.append(step.name)
            evidence.extend(problem)
    if failed:
        message = f"static check(s) failed: {', '.join(failed)}"
        return gate_check("static_checks", False, message, evidence)
    return gate_check("static_checks", True, f"passed: {', '.join(s.name for s in steps)}")


def _run_static(
    step: CiStep,
    worktree: Path,
    log_dir: Path,
    env: dict[str, str],
    used: set[str],
    confinement: sandbox.Confinement,
) -> list[str]:
    """Run one static check; evidence of its failure, or [] when it passed."""
    stem = _log_stem(step.name, used)
    log_path = log_dir / f"{stem}.log"
    junit = shlex.quote(str(log_dir / f"{stem}.junit.xml"))
    with confinement.jail(worktree, "static_checks", step.name, writable=[log_dir]) as jail:
        res = sandbox.run(
            jail, step.run.replace(_JUNIT_PLACEHOLDER, junit), cwd=worktree, env=env, timeout_s=step.timeout_s,
            log_path=log_path,
        )
    mask_file(log_path)
    output = masked(res.stdout + res.stderr)  # stderr only holds proc's own reason a start failed
    if res.ok:
        return []
    outcome = (
        f"timed out after {step.timeout_s} s and was killed"
        if res.timed_out
        else f"rc {res.returncode}"
    )
    tail = "\n".join(output.splitlines()[-STATIC_LOG_TAIL_LINES:]) or "(no output)"
    return [
        f"{step.name}: command: {step.run}",
        f"{step.name}: {outcome}",
        f"{step.name}: last {STATIC_LOG_TAIL_LINES} lines of {log_path.name}:\n{tail}",
    ]


def _log_stem(name: str, used: set[str]) -> str:
    safe = _UNSAFE_NAME_CHARS.sub("_", name).strip("._") or "check"
    stem = f"static-{safe}"
    if stem in used:  # two names that sanitise alike must not share a log
        stem = f"{stem}-{len(used) + 1}"
    used.add(stem)
    return stem
