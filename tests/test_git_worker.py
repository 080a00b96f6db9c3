"""The remote git worker (pipeline.vcs.codec): a supervisor with no git on PATH drives a run
through an outbox directory that a worker with git serves.

Real everything: the supervisor and the worker are `python -m pipeline` subprocesses (or,
for the protocol details, a GitWorker in a thread of this process), the target is a real
repository, the builder a script, CI a real command.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.core.errors import GitError, InvalidInput
from pipeline.vcs.adapter import ApplyResult, GitAdapter, IntegrationStatus, RefsState, WorktreeEntry
from pipeline.vcs.codec import (
    DONE,
    OPS,
    OUTBOX_ENV,
    REQUESTS,
    RESULTS,
    TIMEOUT_ENV,
    WORKERS,
    encode_request,
    timeout_from_env,
)
from pipeline.vcs.local import LocalGitCli
from pipeline.vcs.remote import RemoteGitAdapter, make_adapter
from pipeline.vcs.worker import GitWorker
from testing.gitrepo import git, make_repo
from testing.runs import make_workspace, phase, python_step

BRANCH = "autonomous/r1"


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"README.md": "sample\n", "src/app.py": "A = 1\n"})


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    return tmp_path / "outbox"


@pytest.fixture
def worker(outbox: Path) -> Iterator[GitWorker]:
    """A worker serving `outbox` from a thread of this process."""
    served = GitWorker(outbox)
    thread = threading.Thread(target=served.serve, kwargs={"idle_exit_s": 60.0}, daemon=True)
    thread.start()
    yield served
    served.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.fixture
def remote(outbox: Path, repo: Path, worker: GitWorker) -> RemoteGitAdapter:
    return RemoteGitAdapter(outbox, repo, timeout_s=20)


def no_git_bin(tmp_path: Path) -> Path:
    """A directory holding only a `python` link: a PATH on which there is no git."""
    bindir = tmp_path / "nogit-bin"
    bindir.mkdir(exist_ok=True)
    if not (bindir / "python").exists():
        (bindir / "python").symlink_to(sys.executable)
    assert shutil.which("git", path=str(bindir)) is None
    return bindir


def pipeline(cwd: Path, env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pipeline", *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr + done.stdout
    return done


def shown(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"


def write_request(outbox: Path, request_id: str, data: object) -> Path:
    path = outbox / REQUESTS / f"{request_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def result_of(outbox: Path, request_id: str) -> dict[str, typing.Any]:
    data = json.loads((outbox / RESULTS / f"{request_id}.json").read_text())
    assert isinstance(data, dict)
    return data


def count_commits(repo: Path, ref: str) -> int:
    return int(git(repo, "rev-list", "--count", ref))


# -- the whole run, with no git where the supervisor runs -------------------------------------


@pytest.mark.parametrize("target_separate", [True, False], ids=["other-repo", "workspace-repo"])
def test_a_run_without_git_on_the_supervisor_side(tmp_path: Path, target_separate: bool) -> None:
    setup = make_workspace(
        tmp_path,
        files={"mod.py": "X = 1\n"},
        agent_body='write("mod.py", "X = 2\\n")\nresult(status="success")',
        phases=[phase("P1")],
        ci_steps=[python_step("import", "import mod; assert mod.X == 2")],
        target_separate=target_separate,
    )
    outbox = tmp_path / "outbox"
    worker_env = dict(os.environ)
    worker_env.pop(OUTBOX_ENV, None)
    log = tmp_path / "worker.log"
    with log.open("w") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "git_worker", "--outbox", str(outbox), "--idle-exit", "20"],
            cwd=tmp_path,
            env=worker_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        supervisor_env = {**os.environ, "PATH": str(no_git_bin(tmp_path)), OUTBOX_ENV: str(outbox)}
        started = pipeline(setup.workspace, supervisor_env, "start_run", "--run", setup.run_id)
        assert started.returncode == 0, shown(started)
        ran = pipeline(setup.workspace, supervisor_env, "run", "--run", setup.run_id)
        assert ran.returncode == 0, shown(ran)
    finally:
        worker.send_signal(signal.SIGTERM)  # the worker this test started
        worker.wait(timeout=20)
    out = log.read_text()
    assert worker.returncode == 0, out
    assert "Traceback" not in out, out
    assert "git worker stopped:" in out and " commit in " in out, out

    run = setup.run_json()
    assert run["state"] == "DONE_SUCCESS", run.get("failure_reason")
    snapshot = setup.phase_json("P1")
    assert snapshot["state"] == "COMPLETE"
    # The snapshot commit and its annotated tag are in the target repository.
    assert setup.git("rev-parse", f"refs/tags/{setup.tag('P1')}^{{commit}}") == snapshot["commit"]
    assert setup.git("cat-file", "-t", f"refs/tags/{setup.tag('P1')}") == "tag"
    assert setup.commits_with_trailer("Autopack-Phase", "P1") == [snapshot["commit"]]
    assert setup.git("show", f"{snapshot['commit']}:mod.py") == "X = 2"
    assert setup.git("rev-parse", "refs/heads/main") != snapshot["commit"]
    if not target_separate:  # the branch carries the record (docs/architecture.md, The run directory)
        assert "DONE_SUCCESS" in setup.git("show", f"{setup.branch}:runs/{setup.run_id}/run.json")
    # Every request was answered and taken; the worker's ledger keeps the answers.
    assert not list((outbox / REQUESTS).iterdir())
    assert not list((outbox / RESULTS).iterdir())
    assert len(list((outbox / DONE).iterdir())) > 10
    assert not list((outbox / WORKERS).iterdir())  # a stopped worker removes its heartbeat


def test_without_a_worker_start_run_fails_clearly(tmp_path: Path) -> None:
    setup = make_workspace(tmp_path, agent_body="pass")
    outbox = tmp_path / "outbox"
    env = {**os.environ, "PATH": str(no_git_bin(tmp_path)), OUTBOX_ENV: str(outbox), TIMEOUT_ENV: "0.5"}
    started = time.monotonic()
    done = pipeline(setup.workspace, env, "start_run", "--run", setup.run_id)
    assert time.monotonic() - started < 30
    assert done.returncode == 1, shown(done)
    assert done.stderr.startswith("error: no git worker serves the outbox "), done.stderr
    assert str(outbox) in done.stderr
    assert f"`doit git_worker --outbox {outbox}`" in done.stderr.split("fix:", 1)[1]
    assert "nothing was applied" in done.stderr
    assert not list((outbox / REQUESTS).iterdir())  # the request was withdrawn
    assert not (setup.run_dir / "run.json").exists()


def test_a_worker_that_does_not_answer_in_time(outbox: Path, repo: Path) -> None:
    # A live worker (a fresh heartbeat) that never takes the request: the full timeout.
    (outbox / WORKERS).mkdir(parents=True)
    (outbox / WORKERS / "busy-1.json").write_text("{}")
    adapter = RemoteGitAdapter(outbox, repo, timeout_s=0.3)
    with pytest.raises(GitError) as caught:
        adapter.resolve("main")
    assert f"git resolve for {repo} got no result from the git worker on the outbox {outbox}" in caught.value.message
    assert "within 0.3s" in caught.value.message and "withdrawn" in caught.value.message
    assert "doit git_worker --outbox" in caught.value.fix and TIMEOUT_ENV in caught.value.fix
    assert not list((outbox / REQUESTS).iterdir())


# -- the protocol ----------------------------------------------------------------------------


def test_the_remote_adapter_covers_the_git_adapter_protocol(outbox: Path, repo: Path) -> None:
    members = {name for name in vars(GitAdapter) if not name.startswith("_")}
    assert members <= OPS, f"GitAdapter methods without a remote operation: {sorted(members - OPS)}"
    assert all(callable(getattr(RemoteGitAdapter, op, None)) for op in OPS)
    assert isinstance(RemoteGitAdapter(outbox, repo), GitAdapter)


def test_every_operation_round_trips(remote: RemoteGitAdapter, repo: Path, tmp_path: Path) -> None:
    local = LocalGitCli(repo)
    wt = tmp_path / "work space" / "wt"
    assert remote.check_available() == local.check_available()
    assert remote.toplevel() == local.toplevel()
    assert remote.current_branch() == "main"
    main = local.resolve("main")
    assert remote.resolve("main") == main and remote.resolve("nope") is None
    assert remote.branch_exists("main") and not remote.branch_exists(BRANCH)
    assert remote.ensure_worktree(BRANCH, "main", wt) == main
    assert remote.head(wt) == main and remote.branch_exists(BRANCH)
    assert not remote.is_dirty(wt)
    remote.assert_clean(wt)

    # A patch whose bytes are not UTF-8 survives the trip both ways.
    (wt / "src" / "app.py").write_text("A = 2\n")
    (wt / "latin1.txt").write_bytes(b"caf\xe9\n")
    assert remote.is_dirty(wt)
    patch_text = remote.collect_patch(wt, main or "")
    assert "A = 2" in patch_text
    remote.reset_to(wt, BRANCH, main or "")
    assert not remote.is_dirty(wt) and not (wt / "latin1.txt").exists()
    patch = tmp_path / "patch.diff"
    patch.write_bytes(patch_text.encode("utf-8", errors="surrogateescape"))
    assert remote.apply(wt, patch) == ApplyResult(ok=True, three_way=False, message="applied")
    assert (wt / "latin1.txt").read_bytes() == b"caf\xe9\n"
    (wt / "build.log").write_text("CI's leftover\n")
    assert remote.reapply(wt, BRANCH, main or "", patch) == ApplyResult(ok=True, three_way=False, message="applied")
    assert (wt / "latin1.txt").read_bytes() == b"caf\xe9\n" and not (wt / "build.log").exists()

    sha = remote.commit(wt, "phase P1\n\nbody: café", {"Autopack-Phase": "P1"})
    assert remote.head(wt) == sha == local.resolve(BRANCH)
    assert git(repo, "log", "-1", "--format=%B", sha) == "phase P1\n\nbody: café\n\nAutopack-Phase: P1"
    assert not remote.commit_changes(wt, "nothing", {"Autopack-Run": "r1"})
    (wt / "more.txt").write_text("more\n")
    assert remote.commit_changes(wt, "record", {"Autopack-Run": "r1"})
    remote.tag(wt, "autonomous/r1/P1", sha, "tag message")
    assert remote.tag_target("autonomous/r1/P1") == sha and remote.tag_target("none") is None
    assert remote.find_commit_with_trailer(BRANCH, "Autopack-Phase", "P1", since=main) == sha
    assert remote.find_commit_with_trailer(BRANCH, "Autopack-Phase", "P9") is None
    status = remote.integration_status(wt, "main", BRANCH)
    assert status == local.integration_status(wt, "main", BRANCH)
    assert status == IntegrationStatus(
        ahead=2, behind=0, head=local.resolve(BRANCH) or "", last_snapshot=sha, dirty=False
    )
    assert remote.is_ancestor(main or "", BRANCH) and not remote.is_ancestor(BRANCH, "main")
    on_branch = [local.resolve(BRANCH), sha]  # the record commit, then the phase's
    assert remote.branch_commits(BRANCH, main or "") == local.branch_commits(BRANCH, main or "") == on_branch
    assert remote.branch_commits("nope", main or "") is None
    assert remote.worktrees() == local.worktrees()
    assert all(isinstance(e, WorktreeEntry) and isinstance(e.path, Path) for e in remote.worktrees())
    assert remote.checked_out_in(BRANCH) == wt.resolve() and remote.checked_out_in("nope") is None
    assert remote.last_commit() == local.last_commit()
    (wt / "new dir").mkdir()
    (wt / "new dir" / "n.txt").write_text("n\n")
    assert remote.changed_paths(wt) == local.changed_paths(wt) == ["new dir/n.txt"]
    (wt / "new dir" / "n.txt").unlink()

    before = remote.refs_state()
    assert isinstance(before, RefsState) and before == local.refs_state()
    git(wt, "branch", "agent-made")
    changes = remote.restore_refs(before, keep={f"refs/heads/{BRANCH}"}, quarantine="refs/autopack/quarantine/t")
    assert changes and "refs/heads/agent-made" in changes[0]
    assert not remote.branch_exists("agent-made")

    home = repo  # the user's checkout has main: merge there
    merged = remote.merge_no_ff("main", BRANCH, "promote r1", home)
    assert local.resolve("main") == merged and remote.is_ancestor(sha, "main")
    remote.remove_worktree(wt)
    assert not wt.exists() and remote.checked_out_in(BRANCH) is None


def test_errors_keep_the_message_and_fix_of_host_git(remote: RemoteGitAdapter, repo: Path, tmp_path: Path) -> None:
    local = LocalGitCli(repo)
    wt = tmp_path / "wt"
    remote.ensure_worktree(BRANCH, "main", wt)
    (wt / "stray.txt").write_text("x\n")
    with pytest.raises(GitError) as here:
        local.assert_clean(wt)
    with pytest.raises(GitError) as there:
        remote.assert_clean(wt)
    assert (there.value.message, there.value.fix) == (here.value.message, here.value.fix)
    with pytest.raises(GitError, match="is the user's checkout") as refused:
        remote.reset_to(repo, "main", "HEAD")
    assert refused.value.fix
    with pytest.raises(GitError, match=r"patch file .* does not exist"):
        remote.apply(wt, tmp_path / "missing.diff")
    # The user's checkout is untouched by all of it.
    assert git(repo, "status", "--porcelain") == ""


def test_a_repository_the_worker_cannot_see(tmp_path: Path, outbox: Path) -> None:
    missing = RemoteGitAdapter(outbox, tmp_path / "nowhere", timeout_s=5)
    with pytest.raises(GitError, match=r"target repository .*nowhere does not exist"):
        missing.head(tmp_path)  # the supervisor does not see it either: no round trip
    assert not (outbox / REQUESTS).exists() or not list((outbox / REQUESTS).iterdir())
    # One the supervisor sees but the worker does not (not mounted there): the worker says so.
    request = encode_request("0001-r", "resolve", tmp_path / "not-mounted", {"ref": "main"})
    write_request(outbox, "0001-r", request)
    GitWorker(outbox).serve(once=True)
    error = result_of(outbox, "0001-r")["error"]
    assert error["kind"] == "git_error" and "does not see the repository" in error["message"]
    assert "same paths" in error["fix"]


def test_a_malformed_request_gets_an_error_result(tmp_path: Path, repo: Path) -> None:
    outbox = tmp_path / "outbox"
    good = encode_request("04-good", "resolve", repo, {"ref": "main"})
    bad = {
        "01-not-json": "{not json",
        "02-unknown-op": {**good, "id": "02-unknown-op", "op": "push"},
        "03-missing-arg": {**good, "id": "03-missing-arg", "args": {}},
        "05-relative-path": {**encode_request("05-relative-path", "head", repo, {"worktree": repo}), "repo": "rel"},
        "06-wrong-type": {**good, "id": "06-wrong-type", "args": {"ref": 7}},
        "07-old-protocol": {**good, "id": "07-old-protocol", "protocol": 0},
        "08-other-id": good,
        "09-array": [1, 2],
    }
    for request_id, data in bad.items():
        write_request(outbox, request_id, data)
    write_request(outbox, "04-good", good)
    write_request(outbox, "bad name", good)
    (outbox / REQUESTS / "10-a-directory.json").mkdir()
    env = {k: v for k, v in os.environ.items() if k != OUTBOX_ENV}
    done = pipeline(tmp_path, env, "git_worker", "--outbox", str(outbox), "--once")
    assert done.returncode == 0, shown(done)
    assert "9 malformed" in done.stdout and "1 rejected" in done.stdout, done.stdout

    answered = result_of(outbox, "04-good")  # the good request among them is served
    assert (answered["ok"], answered["op"], answered["value"]) == (True, "resolve", git(repo, "rev-parse", "main"))
    expected = {
        "01-not-json": "Expecting property name",
        "02-unknown-op": "unknown operation 'push'",
        "03-missing-arg": "resolve is missing argument(s) ref",
        "05-relative-path": "repo must be an absolute path, not 'rel'",
        "06-wrong-type": "args.ref must be a string, not a number",
        "07-old-protocol": "protocol 0 is not supported",
        "08-other-id": "does not match its file name 08-other-id.json",
        "09-array": "must be a JSON object, not an array",
        "10-a-directory": "Is a directory",
    }
    for request_id, needle in expected.items():
        result = result_of(outbox, request_id)
        assert result["ok"] is False and result["error"]["kind"] == "malformed", result
        assert needle in result["error"]["message"], result
        assert request_id in result["error"]["message"] and result["error"]["fix"]
    assert (outbox / "rejected" / "bad name.json").exists()
    assert not list((outbox / REQUESTS).iterdir())

    # The worker needs an outbox.
    missing = pipeline(tmp_path, env, "git_worker")
    assert missing.returncode == 2 and "missing --outbox" in missing.stderr, shown(missing)


def test_a_redelivered_request_is_not_applied_twice(repo: Path, outbox: Path, tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    LocalGitCli(repo).ensure_worktree(BRANCH, "main", wt)
    (wt / "new.txt").write_text("one\n")
    request = encode_request(
        "0001-commit", "commit", repo, {"worktree": wt, "message": "once", "trailers": {}, "allow_empty": False}
    )
    write_request(outbox, "0001-commit", request)
    stats = GitWorker(outbox).serve(once=True)
    assert stats.applied == 1
    first = result_of(outbox, "0001-commit")
    assert first["ok"] is True and first["value"] == git(repo, "rev-parse", BRANCH)
    commits = count_commits(repo, BRANCH)
    (outbox / RESULTS / "0001-commit.json").unlink()  # the supervisor took the result

    # The same request again (a retried delivery), with something new to commit.
    (wt / "new.txt").write_text("two\n")
    write_request(outbox, "0001-commit", request)
    stats = GitWorker(outbox).serve(once=True)
    assert (stats.applied, stats.replayed) == (0, 1)
    assert result_of(outbox, "0001-commit") == first
    assert count_commits(repo, BRANCH) == commits
    assert git(wt, "status", "--porcelain") == "M new.txt"


def test_requests_are_applied_in_order(repo: Path, outbox: Path, tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    LocalGitCli(repo).ensure_worktree(BRANCH, "main", wt)
    for k in range(1, 4):
        (wt / f"f{k}.txt").write_text(f"{k}\n")
        args = {"worktree": wt, "message": f"commit {k}", "trailers": {}}
        write_request(outbox, f"000{k}-c", encode_request(f"000{k}-c", "commit_changes", repo, args))
    GitWorker(outbox).serve(once=True)
    # The first commit took all three files; the later ones found nothing to commit.
    assert [result_of(outbox, f"000{k}-c")["value"] for k in range(1, 4)] == [True, False, False]
    assert git(repo, "log", "-1", "--format=%s", BRANCH) == "commit 1"


def test_a_stopped_workers_requests_are_recovered(repo: Path, outbox: Path, tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    LocalGitCli(repo).ensure_worktree(BRANCH, "main", wt)
    dead = outbox / "claimed" / "gone-1-abc"
    dead.mkdir(parents=True)
    commit = encode_request(
        "0001-c", "commit", repo, {"worktree": wt, "message": "m", "trailers": {}, "allow_empty": True}
    )
    (dead / "0001-c.json").write_text(json.dumps(commit))
    (dead / "0002-h.json").write_text(json.dumps(encode_request("0002-h", "head", repo, {"worktree": wt})))
    commits = count_commits(repo, BRANCH)
    stats = GitWorker(outbox).serve(once=True)
    assert stats.recovered == 2
    interrupted = result_of(outbox, "0001-c")
    assert interrupted["ok"] is False and interrupted["error"]["kind"] == "interrupted"
    assert "whether it took effect is unknown" in interrupted["error"]["message"]
    assert count_commits(repo, BRANCH) == commits  # a commit is never repeated blindly
    assert result_of(outbox, "0002-h")["value"] == git(repo, "rev-parse", BRANCH)
    assert not dead.exists()


def test_an_error_result_becomes_a_git_error(outbox: Path, repo: Path) -> None:
    adapter = RemoteGitAdapter(outbox, repo, timeout_s=5)

    def answer() -> None:
        for _ in range(500):
            pending = list((outbox / REQUESTS).glob("*.json")) if (outbox / REQUESTS).exists() else []
            if pending:
                request_id = pending[0].stem
                pending[0].unlink()
                result = {
                    "protocol": 1,
                    "id": request_id,
                    "op": "head",
                    "ok": False,
                    "error": {"kind": "git_error", "message": "it broke", "fix": "mend it"},
                }
                (outbox / RESULTS).mkdir(parents=True, exist_ok=True)
                (outbox / RESULTS / f"{request_id}.json").write_text(json.dumps(result))
                return
            time.sleep(0.01)

    thread = threading.Thread(target=answer)
    thread.start()
    with pytest.raises(GitError) as caught:
        adapter.head(repo)
    thread.join()
    assert (caught.value.message, caught.value.fix) == ("it broke", "mend it")


# -- choosing the adapter ----------------------------------------------------------------------


def test_the_environment_chooses_the_adapter(tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.run.context import git_for

    monkeypatch.delenv(OUTBOX_ENV, raising=False)
    assert isinstance(make_adapter(repo), LocalGitCli)
    assert isinstance(git_for(repo), LocalGitCli)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(OUTBOX_ENV, "box")
    monkeypatch.setenv(TIMEOUT_ENV, "42")
    adapter = git_for(repo)
    assert isinstance(adapter, RemoteGitAdapter)
    assert adapter.outbox == tmp_path / "box" and adapter.timeout_s == 42 and adapter.repo == repo
    assert git_for(repo) is adapter
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(InvalidInput, match=f"{TIMEOUT_ENV}='soon' is not a number of seconds"):
        make_adapter(repo)
    assert timeout_from_env({TIMEOUT_ENV: ""}) > 0
    for bad in ("0", "-1", "inf", "nan"):
        with pytest.raises(InvalidInput):
            timeout_from_env({TIMEOUT_ENV: bad})


@pytest.mark.parametrize(("op", "repeatable"), [("commit", False), ("head", True)])
def test_a_worker_killed_between_applying_and_answering(
    repo: Path, outbox: Path, tmp_path: Path, op: str, repeatable: bool
) -> None:
    """kill -9 after git ran, before the ledger: the next worker never applies it twice;
    a repeatable request is answered, a commit is answered 'interrupted' (outcome unknown)."""
    wt = tmp_path / "wt"
    LocalGitCli(repo).ensure_worktree(BRANCH, "main", wt)
    (wt / "new.txt").write_text("one\n")
    args: dict[str, object] = {"worktree": wt}
    if op == "commit":
        args.update({"message": "once", "trailers": {}, "allow_empty": False})
    write_request(outbox, "0001-x", encode_request("0001-x", op, repo, args))
    commits = count_commits(repo, BRANCH)
    killed = subprocess.run(
        [sys.executable, "-m", "pipeline", "git_worker", "--outbox", str(outbox), "--once"],
        cwd=tmp_path, env={**os.environ, "AUTOPACK_FAILPOINT": "worker_applied"},
        capture_output=True, text=True, timeout=60,
    )
    assert killed.returncode == 137, killed.stdout + killed.stderr
    applied = count_commits(repo, BRANCH)
    assert applied == commits + (0 if repeatable else 1), "git ran before the kill"
    assert not (outbox / RESULTS / "0001-x.json").exists()
    for beat in (outbox / WORKERS).glob("*.json"):  # the dead worker's heartbeat goes stale
        os.utime(beat, (time.time() - 3600, time.time() - 3600))

    stats = GitWorker(outbox).serve(once=True)
    assert stats.recovered == 1
    answer = result_of(outbox, "0001-x")
    assert count_commits(repo, BRANCH) == applied, "never applied twice"
    if repeatable:
        assert answer["ok"] is True and answer["value"] == git(repo, "rev-parse", BRANCH)
    else:
        assert answer["ok"] is False and answer["error"]["kind"] == "interrupted"


def test_a_run_converges_when_the_worker_dies_making_the_snapshot_commit(tmp_path: Path) -> None:
    """The worker is killed after `git commit`, before answering; the next worker answers
    'interrupted'; the supervisor finds the commit by its trailer instead of failing the run
    or committing twice."""
    setup = make_workspace(
        tmp_path, files={"mod.py": "X = 1\n"}, agent_body='write("mod.py", "X = 2\\n")',
        ci_steps=[python_step("import", "import mod")],
    )
    outbox = tmp_path / "outbox"
    worker_env = {k: v for k, v in os.environ.items() if k != OUTBOX_ENV}
    argv = [sys.executable, "-m", "pipeline", "git_worker", "--outbox", str(outbox), "--idle-exit", "30"]
    first = subprocess.Popen(
        argv, cwd=tmp_path, env={**worker_env, "AUTOPACK_FAILPOINT": "worker_applied:commit"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    supervisor_env = {**os.environ, "PATH": str(no_git_bin(tmp_path)), OUTBOX_ENV: str(outbox), TIMEOUT_ENV: "60"}
    second: subprocess.Popen[bytes] | None = None
    try:
        assert pipeline(setup.workspace, supervisor_env, "start_run", "--run", setup.run_id).returncode == 0
        run = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", "--run", setup.run_id], cwd=setup.workspace,
            env=supervisor_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert first.wait(timeout=60) == 137, "the worker died right after the snapshot commit"
        for beat in (outbox / WORKERS).glob("*.json"):  # its heartbeat goes stale
            os.utime(beat, (time.time() - 3600, time.time() - 3600))
        second = subprocess.Popen(argv, cwd=tmp_path, env=worker_env, stdout=subprocess.DEVNULL)
        out, _ = run.communicate(timeout=90)
        assert run.returncode == 0, out
    finally:
        for worker in (first, second):
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=20)
    assert setup.run_json()["state"] == "DONE_SUCCESS"
    commit = setup.phase_json("P1")["commit"]
    assert setup.commits_with_trailer("Autopack-Phase", "P1") == [commit], "one snapshot commit"
    assert setup.git("rev-parse", f"refs/tags/{setup.tag('P1')}^{{commit}}") == commit
