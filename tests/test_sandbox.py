"""Untrusted steps in a sandbox, and the checks that hold without one (docs/security.md).

Every escape a hostile builder (or CI step) tries ends in a policy violation or a no-op,
with the user's repository and the run record intact, with bubblewrap and with the
fallback (`AUTOPACK_SANDBOX=off`).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core import proc, sandbox
from pipeline.core.errors import EnvironmentProblem
from pipeline.run import guard
from pipeline.run.driver import run_to_end
from testing.gitrepo import git, make_repo
from testing.runs import RunSetup, make_workspace, phase, python_step

HAVE_BWRAP = sandbox.bwrap_problem() is None
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason=f"no usable bubblewrap: {sandbox.bwrap_problem()}")
FILES = {"mod.py": "X = 1\n"}



def _linked(tmp_path: Path) -> tuple[Path, Path]:
    repo = make_repo(tmp_path / "repo", FILES)
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "autonomous/r", str(wt))
    return repo, wt


def _sh(jail: sandbox.Jail, line: str, cwd: Path, timeout_s: float = 30) -> proc.ProcResult:
    return sandbox.run(jail, line, cwd=cwd, env=proc.scrubbed_env(), timeout_s=timeout_s)


# -- the jail itself ----------------------------------------------------------------------


@needs_bwrap
def test_a_jailed_step_writes_its_worktree_only(tmp_path: Path) -> None:
    repo, wt = _linked(tmp_path)
    record = tmp_path / "runs" / "r"
    record.mkdir(parents=True)
    (record / "run.json").write_text("{}\n")
    with sandbox.jail_for("bwrap", wt, readonly=[record, repo / ".git"]) as jail:
        res = _sh(jail, f"""
            echo new > new.txt && echo wt-ok
            echo x > {record}/run.json || echo record-ro
            touch {repo}/.git/hooks/pre-commit || echo hooks-ro
            echo '[core] bare = true' >> {repo}/.git/config || echo config-ro
            touch {tmp_path}/outside || echo outside-ro
            echo t > "$TMPDIR/scratch" && echo tmp-ok
        """, wt)
    assert res.ok, res.stdout + res.stderr
    for word in ("wt-ok", "record-ro", "hooks-ro", "config-ro", "outside-ro", "tmp-ok"):
        assert word in res.stdout
    assert (wt / "new.txt").read_text() == "new\n"
    assert (record / "run.json").read_text() == "{}\n"
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()
    assert "bare = true" not in (repo / ".git" / "config").read_text()
    assert not (tmp_path / "outside").exists()


@needs_bwrap
def test_a_jailed_agent_commits_in_a_private_git_dir(tmp_path: Path) -> None:
    repo, wt = _linked(tmp_path)
    refs_before = git(repo, "for-each-ref")
    ident = "-c user.name=a -c user.email=a@example.invalid"
    with sandbox.jail_for("bwrap", wt, readonly=[repo / ".git"]) as jail:
        res = _sh(jail, f"""
            set -e
            echo Y = 2 > extra.py
            git {ident} add -A && git {ident} commit -q -m agent
            git {ident} branch agent-scratch && git {ident} tag agent-tag
            git log --format=%s -1
        """, wt)
    assert res.ok, res.stdout + res.stderr
    assert res.stdout.strip().endswith("agent")
    assert git(repo, "for-each-ref") == refs_before, "the agent's commit, branch or tag reached the user's refs"
    assert (wt / "extra.py").exists()
    assert "extra.py" in git(wt, "status", "--porcelain")  # the supervisor takes it from the working tree


@needs_bwrap
def test_a_jailed_step_starts_on_the_worktrees_branch_with_no_loose_ref_directories(tmp_path: Path) -> None:
    _repo, wt = _linked(tmp_path)
    head = git(wt, "rev-parse", "HEAD")
    with sandbox.jail_for("bwrap", wt) as jail:
        assert jail.tmp is not None
        private = jail.tmp / ".autopack-git"
        assert sorted(p.name for p in (private / "refs").iterdir()) == [], "a directory made and removed per step"
        res = _sh(jail, "git rev-parse --abbrev-ref HEAD && git rev-parse HEAD && git status --porcelain", wt)
    assert res.ok, res.stdout + res.stderr
    assert res.stdout.split() == ["autonomous/r", head]


@needs_bwrap
def test_a_jailed_step_sees_no_other_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _repo, wt = _linked(tmp_path)
    token = "withheld-" + secrets.token_hex(8)
    monkeypatch.setenv("AUTOPACK_TEST_WITHHELD", token)
    with sandbox.jail_for("bwrap", wt) as jail:
        res = _sh(jail, "cat /proc/$PPID/environ /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; ls /proc", wt)
    assert token not in res.stdout
    pids = [w for w in res.stdout.split() if w.isdigit()]
    assert len(pids) < 10, f"the step sees processes outside its sandbox: {pids}"


@pytest.mark.parametrize("level", [pytest.param("bwrap", marks=needs_bwrap), "none"])
def test_a_detached_helper_dies_with_its_step(tmp_path: Path, level: sandbox.Isolation) -> None:
    _repo, wt = _linked(tmp_path)
    late = wt / "late.txt"
    code = (
        "import subprocess; subprocess.Popen(['setsid', 'sh', '-c', 'sleep 1; echo late > " + str(late) + "'],"
        " start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)"
    )
    line = f"{sys.executable} -c \"{code}\""
    with sandbox.jail_for(level, wt) as jail:
        res = _sh(jail, line, wt)
    assert res.ok, res.stdout + res.stderr
    time.sleep(1.8)
    assert not late.exists(), "a helper the step detached outlived it"


@needs_bwrap
def test_no_network_leaves_only_loopback(tmp_path: Path) -> None:
    _repo, wt = _linked(tmp_path)
    code = "import socket; print(sorted(n for _i, n in socket.if_nameindex()))"
    conf = sandbox.Confinement("bwrap", no_network=frozenset({"ci"}))
    with conf.jail(wt, "ci", "tests") as jail:
        cut = _sh(jail, f"{sys.executable} -c '{code}'", wt)
    assert cut.stdout.strip() == "['lo']"
    assert conf.network("builder") and not conf.network("static_checks", "ci")


def test_required_isolation_refuses_without_a_sandbox() -> None:
    with pytest.raises(EnvironmentProblem) as err:
        sandbox.decide(True, {sandbox.SWITCH_ENV: "off"})
    assert "sandbox.isolation: required" in str(err.value) and "bubblewrap" in err.value.render()
    assert sandbox.decide(False, {sandbox.SWITCH_ENV: "off"})[0] == "none"


def test_a_run_with_required_isolation_and_no_sandbox_is_an_environment_failure(tmp_path: Path) -> None:
    setup = make_workspace(tmp_path, files=FILES, agent_body='write("mod.py", "X = 2\\n")')
    (setup.workspace / "profiles").mkdir()
    (setup.workspace / "profiles" / "ruleset.yaml").write_text("sandbox:\n  isolation: required\n")
    setup.start()
    env = {**os.environ, sandbox.SWITCH_ENV: "off"}
    before = setup.store.events_path.read_bytes()
    done = _cli(setup, env, "run", "--run", setup.run_id)
    assert done.returncode == 1, done.stderr  # the environment's fault: exit 1, as a missing tool
    assert "requires a sandbox" in done.stderr and "bubblewrap" in done.stderr
    assert "Traceback" not in done.stderr
    assert setup.store.events_path.read_bytes() == before, "the refused run changed its record"
    assert setup.run_json()["state"] != "DONE_FAILED_ENVIRONMENT"


# -- the guard ----------------------------------------------------------------------------


def test_guard_names_restores_and_removes(tmp_path: Path) -> None:
    repo, wt = _linked(tmp_path)
    record = tmp_path / "runs" / "r"
    (record / "attempts").mkdir(parents=True)
    (record / "run.json").write_text('{"state": "PHASE_EXECUTION"}\n')
    config = (repo / ".git" / "config").read_bytes()
    snap = guard.take(record, wt, allowed=[record / "attempts"])
    (record / "run.json").write_text('{"state": "DONE_SUCCESS"}\n')
    (record / "forged.json").write_text("{}")
    (record / "attempts" / "result.json").write_text("{}")  # allowed
    (repo / ".git" / "hooks" / "post-checkout").write_text("#!/bin/sh\ntouch /tmp/pwned\n")
    with (repo / ".git" / "config").open("a") as fh:
        fh.write('[filter "x"]\n\tclean = touch /tmp/pwned\n')
    found = guard.changes(snap)
    assert found == sorted([
        f"modified {record / 'run.json'}",
        f"created {record / 'forged.json'}",
        f"created {(repo / '.git' / 'hooks' / 'post-checkout').resolve()}",
        f"modified {(repo / '.git' / 'config').resolve()}",
    ])
    assert guard.restore(snap) == []
    assert guard.changes(snap) == []
    assert (record / "run.json").read_text() == '{"state": "PHASE_EXECUTION"}\n'
    assert (repo / ".git" / "config").read_bytes() == config
    assert (record / "attempts" / "result.json").exists()


# -- hostile builders through a whole run -------------------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shared_git(repo: Path) -> dict[str, str]:
    files, dirs = guard.shared_git_paths(repo)
    out = {str(p): _sha(p) for p in files if p.is_file()}
    for d in dirs:
        out |= {str(p): _sha(p) for p in d.rglob("*") if p.is_file()}
    return out


ESCAPES = {
    "rewrite-strategy": (
        "p = Path(os.environ['AUTOPACK_PHASE_JSON']).parents[2] / 'strategy.json'\n"
        "d = json.loads(p.read_text()); d['protected_paths'] = []\n"
        "p.write_text(json.dumps(d))\n",
        "strategy.json",
    ),
    "forge-later-phase": (
        "for p in Path(os.environ['AUTOPACK_PHASE_JSON']).parents[1].glob('*-P2/phase.json'):\n"
        "    d = json.loads(p.read_text()); d['state'] = 'COMPLETE'; p.write_text(json.dumps(d))\n",
        "phase.json",
    ),
    "shared-hook": (
        "h = Path(REPO) / '.git' / 'hooks' / 'post-commit'\n"
        "h.write_text('#!/bin/sh\\ntouch ' + REPO + '/PWNED\\n'); h.chmod(0o755)\n",
        "hooks/post-commit",
    ),
    "shared-config-bare": (
        "open(Path(REPO) / '.git' / 'config', 'a').write('[core]\\n\\tbare = true\\n')\n",
        ".git/config",
    ),
    "filter-driver": (
        "cfg = open(Path(REPO) / '.git' / 'config', 'a')\n"
        "cfg.write('[filter \"evil\"]\\n\\tclean = touch ' + REPO + '/PWNED\\n'); cfg.close()\n"
        "write('.gitattributes', '*.py filter=evil\\n')\n",
        ".git/config",
    ),
}


def _hostile(tmp_path: Path, escape: str) -> RunSetup:
    attempt, _name = ESCAPES[escape]
    body = (
        f"REPO = {str(tmp_path / 'repo')!r}\n"
        "try:\n" + "".join(f"    {line}\n" for line in attempt.splitlines()) +
        "except OSError as exc:\n    print('escape refused:', exc)\n"
        'write("mod.py", f"X = 2  # {PHASE}\\n")\n'
    )
    return make_workspace(
        tmp_path, files=FILES, agent_body=body, ci_steps=[python_step("import", "import mod")],
        phases=[phase("P1"), phase("P2")],
    )


@pytest.mark.parametrize("escape", sorted(ESCAPES))
def test_hostile_builder_ends_in_a_violation_or_a_no_op(tmp_path: Path, mode: str, escape: str) -> None:
    setup = _hostile(tmp_path, escape)
    setup.start()
    strategy = _sha(setup.store.strategy_json)
    shared = _shared_git(setup.repo)
    run_to_end(setup.workspace, setup.run_id)
    run = setup.run_json()
    # Nothing outside the worktree changed: the user's git state and the frozen strategy.
    assert _shared_git(setup.repo) == shared
    assert _sha(setup.store.strategy_json) == strategy
    assert not (setup.repo / "PWNED").exists()
    assert git(setup.repo, "rev-parse", "--is-bare-repository") == "false"
    assert ".gitattributes" not in git(setup.repo, "ls-tree", "-r", "--name-only", setup.branch).split()
    if mode == "bwrap":
        assert run["isolation"] == "bwrap"
        assert run["state"] == "DONE_SUCCESS"  # every escape was refused by the sandbox: a no-op
        assert "escape refused" in (setup.phase_dir("P1") / "attempts" / "1" / "builder.log").read_text()
        return
    assert run["isolation"].startswith("none")
    assert run["state"] == "DONE_FAILED_POLICY_VIOLATION", run.get("failure_reason")
    assert ESCAPES[escape][1] in run["failure_reason"], run["failure_reason"]
    assert setup.phase_json("P2")["state"] != "COMPLETE"
    assert git(setup.repo, "tag", "--list", f"autonomous/{setup.run_id}/*") == ""
    assert "guard:builder" in setup.issue_keys("P1")
    summary = (setup.run_dir / "RUN_SUMMARY.md").read_text()
    assert "Isolation of untrusted steps: none" in summary


@pytest.mark.parametrize("where", ["ci", "static"])
def test_hostile_ci_step_cannot_rewrite_the_record(tmp_path: Path, mode: str, where: str) -> None:
    code = (
        "import pathlib,sys\n"
        "p = pathlib.Path(sys.argv[1])\n"
        "try:\n    p.write_text('{}')\nexcept OSError as e:\n    print('refused', e)\n"
    )
    script = tmp_path / "ci_evil.py"
    script.write_text(code)
    setup = make_workspace(
        tmp_path, files=FILES, agent_body='write("mod.py", "X = 2\\n")',
        ci_steps=[{"name": "evil", "run": f"{sys.executable} {script} {tmp_path / 'workspace/runs/r1/strategy.json'}"}],
    )
    if where == "static":  # the same command as a static check of the gate; CI itself is harmless
        text = setup.plan_path.read_text()
        evil = text[text.index("      - name: evil"):text.index("tiers:")]
        harmless = f"      - name: ok\n        run: {sys.executable} -c pass\n"
        moved = "    static_checks:\n" + evil + "    steps:\n" + harmless
        setup.plan_path.write_text(text.replace("    steps:\n" + evil, moved))
    setup.start()
    strategy = _sha(setup.store.strategy_json)
    run_to_end(setup.workspace, setup.run_id)
    run = setup.run_json()
    assert _sha(setup.store.strategy_json) == strategy
    if mode == "bwrap":
        assert run["state"] == "DONE_SUCCESS"
    else:
        assert run["state"] == "DONE_FAILED_POLICY_VIOLATION"
        who = "CI" if where == "ci" else "static checks"
        assert f"the {who} changed what it must not touch" in run["failure_reason"]
        assert "strategy.json" in run["failure_reason"]


def test_hostile_builder_with_a_detached_writer_reaches_nothing(tmp_path: Path, mode: str) -> None:
    body = (
        "import subprocess\n"
        "late = Path('.github/workflows/evil.yml').absolute()\n"
        "subprocess.Popen(['setsid', 'sh', '-c', f'sleep 1.5; mkdir -p {late.parent}; echo on: push > {late}'],"
        " start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        'write("mod.py", "X = 2\\n")\n'
    )
    ci = [python_step("slow", "import time; time.sleep(2)")]
    setup = make_workspace(tmp_path, files=FILES, agent_body=body, ci_steps=ci)
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    time.sleep(1.0)
    assert setup.run_json()["state"] == "DONE_SUCCESS"
    assert not (setup.worktree / ".github").exists()
    assert ".github/workflows/evil.yml" not in git(setup.repo, "ls-tree", "-r", "--name-only", setup.branch)


# -- secrets of the supervisor ------------------------------------------------------------


def _cli(setup: RunSetup, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=setup.workspace, env=env,
        capture_output=True, text=True, timeout=300, check=False,
    )


def test_an_agent_reading_proc_environ_finds_no_withheld_secret(tmp_path: Path, mode: str) -> None:
    token = "tok-" + secrets.token_hex(12)
    body = (
        "import glob\n"
        "found = []\n"
        "for f in ['/proc/%d/environ' % os.getppid(), *glob.glob('/proc/[0-9]*/environ')]:\n"
        "    try:\n        found.append(open(f, 'rb').read().decode(errors='replace'))\n"
        "    except OSError:\n        pass\n"
        f"hit = {token!r} in ''.join(found)\n"
        "write('mod.py', 'X = 2\\n')\n"
        "write('found.txt', 'LEAKED\\n' if hit else 'clean\\n')\n"
    )
    setup = make_workspace(tmp_path, files=FILES, agent_body=body, ci_steps=[python_step("import", "import mod")])
    setup.start()
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": token, "DATABASE_URL": f"postgres://u:{token}@db/x"}
    done = _cli(setup, env, "run", "--run", setup.run_id)
    assert done.returncode == 0, done.stderr
    assert git(setup.repo, "show", f"{setup.branch}:found.txt") == "clean"
    assert token not in (setup.phase_dir("P1") / "attempts" / "1" / "builder.log").read_text()
    status = _cli(setup, env, "status", "--run", setup.run_id)
    assert "isolation: " + ("bwrap" if mode == "bwrap" else "none") in status.stdout


def test_record_is_json_after_a_violation(tmp_path: Path, unsandboxed: None) -> None:
    setup = _hostile(tmp_path, "forge-later-phase")
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    for path in setup.run_dir.rglob("*.json"):
        json.loads(path.read_text())
    events = [e for e in setup.events() if e.get("data", {}).get("what") == "guard_violation"]
    assert events and any("phase.json" in c for c in events[0]["data"]["changes"])
