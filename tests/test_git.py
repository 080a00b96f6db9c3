"""pipeline.vcs.adapter against real repositories: the user's checkout is never disturbed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline.core.errors import GitError
from pipeline.vcs.adapter import GitAdapter, encode_patch, valid_ref_name
from pipeline.vcs.local import DEFAULT_GIT_EMAIL, DEFAULT_GIT_NAME, LocalGitCli, git_env
from testing.gitrepo import git, make_repo, tree_snapshot, write_script

BRANCH = "autonomous/r1"
LINES = "".join(f"line {i}\n" for i in range(1, 11))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(
        tmp_path / "repo",
        {"README.md": "sample\n", "src/app.py": LINES, ".gitignore": "*.log\n"},
    )


@pytest.fixture
def cli(repo: Path) -> LocalGitCli:
    return LocalGitCli(repo)


@pytest.fixture
def wt(cli: LocalGitCli, repo: Path) -> Path:
    # A space in the path keeps the porcelain parsing honest.
    path = repo.parent / "work space" / ".autopack" / "worktrees" / "r1"
    cli.ensure_worktree(BRANCH, "main", path)
    return path


def _user_state(repo: Path) -> dict[str, object]:
    """Everything about the user's checkout that a run must leave alone (no git writes)."""
    return {
        "files": tree_snapshot(repo),
        "index": (repo / ".git" / "index").read_bytes(),
        "head": (repo / ".git" / "HEAD").read_text(),
        "main": git(repo, "rev-parse", "refs/heads/main"),
        "stash": git(repo, "stash", "list"),
    }


def _write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def _patch_file(tmp_path: Path, text: str, name: str = "patch.diff") -> Path:
    # Written the way the runner writes it: plain UTF-8.
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_local_git_cli_is_a_git_adapter(cli: LocalGitCli) -> None:
    assert isinstance(cli, GitAdapter)


def test_check_available_reports_the_version(cli: LocalGitCli) -> None:
    assert cli.check_available()[0].isdigit()


def test_git_missing_says_how_to_install(
    cli: LocalGitCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(GitError) as err:
        cli.check_available()
    assert "git is not installed" in err.value.message
    assert "apt-get install git" in err.value.fix
    assert "--no-install-recommends git" in err.value.fix
    with pytest.raises(GitError, match="git is not installed"):
        cli.head(cli.repo)


def test_env_scrubs_inherited_git_locations_and_sets_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GIT_DIR", "/elsewhere/.git")
    monkeypatch.setenv("GIT_INDEX_FILE", "/elsewhere/index")
    monkeypatch.setenv("GIT_SSH_COMMAND", "ssh -i key")
    monkeypatch.setenv("GIT_TERMINAL_PROMPT", "1")
    monkeypatch.delenv("AUTOPACK_GIT_NAME", raising=False)
    env = git_env()
    assert "GIT_DIR" not in env and "GIT_INDEX_FILE" not in env
    assert env["GIT_SSH_COMMAND"] == "ssh -i key"
    assert env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["GIT_AUTHOR_NAME"] == env["GIT_COMMITTER_NAME"] == DEFAULT_GIT_NAME
    assert env["GIT_AUTHOR_EMAIL"] == env["GIT_COMMITTER_EMAIL"] == DEFAULT_GIT_EMAIL
    monkeypatch.setenv("AUTOPACK_GIT_NAME", "Bot")
    assert git_env()["GIT_AUTHOR_NAME"] == "Bot"


def test_inherited_git_dir_does_not_redirect_commands(
    cli: LocalGitCli, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = make_repo(tmp_path / "other", branch="trunk")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    assert cli.current_branch() == "main"
    assert cli.toplevel() == repo.resolve()


def test_not_a_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(GitError) as err:
        LocalGitCli(plain).toplevel()
    assert f"{plain} is not a git repository" in err.value.message
    assert "git init" in err.value.fix and "target.repo" in err.value.fix
    with pytest.raises(GitError, match="does not exist"):
        LocalGitCli(tmp_path / "missing").toplevel()


def test_toplevel_current_branch_resolve(cli: LocalGitCli, repo: Path) -> None:
    assert LocalGitCli(repo / "src").toplevel() == repo.resolve()
    assert cli.current_branch() == "main"
    assert cli.resolve("main") == git(repo, "rev-parse", "HEAD")
    assert cli.resolve("nope") is None
    assert cli.resolve("--all") is None
    assert cli.branch_exists("main") and not cli.branch_exists("nope")


def test_repo_given_as_a_subdirectory(repo: Path, tmp_path: Path) -> None:
    cli = LocalGitCli(repo / "src")
    path = tmp_path / "w"
    base = cli.ensure_worktree(BRANCH, "main", path)
    _write(path, "x.txt", "x\n")
    cli.reset_to(path, BRANCH, base)
    assert not cli.is_dirty(path)
    with pytest.raises(GitError, match="user's checkout"):
        cli.reset_to(repo, BRANCH, base)


def test_detached_head_has_no_current_branch(cli: LocalGitCli, repo: Path) -> None:
    git(repo, "checkout", "-q", "--detach")
    with pytest.raises(GitError) as err:
        cli.current_branch()
    assert "detached HEAD" in err.value.message and str(repo) in err.value.message
    assert "target.base" in err.value.fix


def test_ensure_worktree_leaves_the_users_checkout_alone(
    cli: LocalGitCli, repo: Path, tmp_path: Path
) -> None:
    _write(repo, "stashed.txt", "stashed\n")
    git(repo, "add", "stashed.txt")
    git(repo, "stash", "push", "-q", "-m", "user work")
    _write(repo, "README.md", "the user's unsaved edit\n")
    _write(repo, "src/app.py", LINES + "staged by the user\n")
    git(repo, "add", "src/app.py")
    _write(repo, "notes.txt", "untracked\n")
    _write(repo, "debug.log", "ignored\n")
    before = _user_state(repo)

    path = tmp_path / "ws" / ".autopack" / "worktrees" / "r1"
    sha = cli.ensure_worktree(BRANCH, "main", path)
    assert sha == before["main"]
    assert cli.branch_exists(BRANCH)
    assert (path / "README.md").read_text() == "sample\n"
    # A whole phase cycle in the worktree must not leak into the checkout either.
    _write(path, "src/new.py", "x = 1\n")
    patch = _patch_file(tmp_path, cli.collect_patch(path, sha))
    cli.reset_to(path, BRANCH, sha)
    assert cli.apply(path, patch).ok
    snap = cli.commit(path, "phase F1", {"Autopack-Phase": "F1"})
    cli.tag(path, "autonomous/r1/F1", snap, "F1 accepted")
    cli.integration_status(path, "main", BRANCH)
    cli.remove_worktree(path)

    assert _user_state(repo) == before
    assert cli.current_branch() == "main"


def test_ensure_worktree_is_idempotent(cli: LocalGitCli, wt: Path) -> None:
    _write(wt, "work.txt", "in progress\n")
    first = cli.head(wt)
    assert cli.ensure_worktree(BRANCH, "main", wt) == first
    assert (wt / "work.txt").read_text() == "in progress\n"


def test_ensure_worktree_recreates_a_deleted_worktree(cli: LocalGitCli, wt: Path) -> None:
    shutil.rmtree(wt)
    sha = cli.ensure_worktree(BRANCH, "main", wt)
    assert cli.head(wt) == sha
    assert (wt / "README.md").is_file()


def test_ensure_worktree_elsewhere_after_the_old_one_was_deleted(
    cli: LocalGitCli, wt: Path, tmp_path: Path
) -> None:
    shutil.rmtree(wt)
    moved = tmp_path / "fresh-ci-checkout" / "wt"
    assert cli.ensure_worktree(BRANCH, "main", moved) == cli.resolve(BRANCH)
    assert [e.path for e in cli.worktrees()][1:] == [moved.resolve()]


def test_ensure_worktree_refuses_a_branch_checked_out_elsewhere(
    cli: LocalGitCli, wt: Path, tmp_path: Path
) -> None:
    with pytest.raises(GitError) as err:
        cli.ensure_worktree(BRANCH, "main", tmp_path / "second")
    assert f"branch '{BRANCH}' is already checked out at {wt.resolve()}" in err.value.message


def test_ensure_worktree_puts_a_switched_worktree_back(cli: LocalGitCli, wt: Path) -> None:
    git(wt, "checkout", "-q", "-b", "agent-branch")
    cli.ensure_worktree(BRANCH, "main", wt)
    assert git(wt, "symbolic-ref", "--short", "HEAD") == BRANCH


def test_ensure_worktree_base_missing(cli: LocalGitCli, repo: Path, tmp_path: Path) -> None:
    with pytest.raises(GitError) as err:
        cli.ensure_worktree(BRANCH, "develop", tmp_path / "w")
    assert f"base branch 'develop' does not exist in {repo}" in err.value.message
    assert "main" in err.value.fix
    assert not cli.branch_exists(BRANCH)


def test_ensure_worktree_refuses_bad_names_and_occupied_paths(
    cli: LocalGitCli, repo: Path, tmp_path: Path
) -> None:
    with pytest.raises(GitError, match="not a valid git branch name"):
        cli.ensure_worktree("bad..name", "main", tmp_path / "w")
    occupied = tmp_path / "occupied"
    _write(occupied, "keep.txt", "mine\n")
    with pytest.raises(GitError, match="already exists"):
        cli.ensure_worktree(BRANCH, "main", occupied)
    assert (occupied / "keep.txt").read_text() == "mine\n"
    with pytest.raises(GitError, match="user's checkout"):
        cli.ensure_worktree(BRANCH, "main", repo)


def test_collect_patch_folds_commits_untracked_and_modified(
    cli: LocalGitCli, wt: Path, tmp_path: Path
) -> None:
    base = cli.head(wt)
    _write(wt, "src/committed.py", "by the agent's own commit\n")
    git(wt, "add", "-A")
    git(wt, "commit", "-q", "-m", "agent commit")
    _write(wt, "README.md", "modified\n")
    _write(wt, "src/untracked.py", "new file\n")
    _write(wt, "build.log", "ignored\n")
    (wt / "blob.bin").write_bytes(bytes(range(256)))
    (wt / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (wt / "odd dir").mkdir()
    (wt / "odd dir" / "\u00e9t\u00e9 \"q\".txt").write_bytes(b"na\xefve\n")
    _write(wt, "odd dir/plain \u00fc.txt", "utf-8 text \u00fc\n")

    patch = cli.collect_patch(wt, base)
    assert "b/src/committed.py" in patch
    assert "b/README.md" in patch and "+modified" in patch
    assert "b/src/untracked.py" in patch
    assert "GIT binary patch" in patch
    assert "build.log" not in patch
    assert "+utf-8 text \u00fc" in patch
    patch.encode("utf-8")  # non-UTF-8 files travel as binary patches

    # The patch alone rebuilds the agent's tree at the base, bytes included.
    expected = tree_snapshot(wt)
    del expected["build.log"]
    cli.reset_to(wt, BRANCH, base)
    assert cli.apply(wt, _patch_file(tmp_path, patch)).ok
    assert tree_snapshot(wt) == expected


def test_collect_patch_when_attributes_force_a_text_diff(
    cli: LocalGitCli, wt: Path, tmp_path: Path
) -> None:
    _write(wt, ".gitattributes", "*.txt diff\n")
    base = cli.commit(wt, "attributes", {})
    (wt / "latin1.txt").write_bytes(b"caf\xe9\n")
    patch = cli.collect_patch(wt, base)
    assert "+caf" in patch
    cli.reset_to(wt, BRANCH, base)
    path = tmp_path / "forced.diff"
    path.write_bytes(encode_patch(patch))
    assert cli.apply(wt, path).ok
    assert (wt / "latin1.txt").read_bytes() == b"caf\xe9\n"


def test_collect_patch_of_an_untouched_worktree_is_empty(cli: LocalGitCli, wt: Path) -> None:
    assert cli.collect_patch(wt, cli.head(wt)) == ""


def test_reset_to_after_the_agent_switched_branch_and_committed(
    cli: LocalGitCli, wt: Path
) -> None:
    base = cli.head(wt)
    _write(wt, "on-branch.txt", "committed on the run branch\n")
    git(wt, "add", "-A")
    git(wt, "commit", "-q", "-m", "agent on run branch")
    git(wt, "checkout", "-q", "-b", "agent-side")
    _write(wt, "side.txt", "side\n")
    git(wt, "add", "-A")
    git(wt, "commit", "-q", "-m", "agent on its own branch")
    _write(wt, "scratch.txt", "untracked\n")
    _write(wt, "cache.log", "ignored\n")
    _write(wt, "README.md", "dirty\n")

    cli.reset_to(wt, BRANCH, base)
    assert cli.head(wt) == base == cli.resolve(BRANCH)
    assert git(wt, "symbolic-ref", "--short", "HEAD") == BRANCH
    assert not cli.is_dirty(wt)
    assert sorted(tree_snapshot(wt)) == [".gitignore", "README.md", "src/app.py"]


def test_mutating_operations_refuse_anything_but_a_run_worktree(
    cli: LocalGitCli, repo: Path, tmp_path: Path
) -> None:
    _write(repo, "README.md", "user edit\n")
    before = _user_state(repo)
    base = git(repo, "rev-parse", "HEAD")
    with pytest.raises(GitError, match="user's checkout"):
        cli.reset_to(repo, "main", base)
    with pytest.raises(GitError, match="not the top of a git worktree"):
        cli.reset_to(repo / "src", "main", base)
    with pytest.raises(GitError, match="user's checkout"):
        cli.collect_patch(repo, base)
    other = make_repo(tmp_path / "other")
    with pytest.raises(GitError, match="another repository"):
        cli.commit(other, "x", {}, allow_empty=True)
    with pytest.raises(GitError, match="does not exist"):
        cli.head(tmp_path / "gone")
    assert _user_state(repo) == before


def test_apply_clean_patch(cli: LocalGitCli, wt: Path, tmp_path: Path) -> None:
    base = cli.head(wt)
    _write(wt, "src/app.py", LINES.replace("line 5\n", "LINE 5\n"))
    patch = _patch_file(tmp_path, cli.collect_patch(wt, base))
    cli.reset_to(wt, BRANCH, base)
    result = cli.apply(wt, patch)
    assert (result.ok, result.three_way) == (True, False)
    assert "LINE 5" in (wt / "src/app.py").read_text()
    assert cli.is_dirty(wt)


def test_apply_needing_a_three_way_merge(cli: LocalGitCli, wt: Path, tmp_path: Path) -> None:
    base = cli.head(wt)
    _write(wt, "src/app.py", LINES.replace("line 5\n", "LINE 5\n"))
    patch = _patch_file(tmp_path, cli.collect_patch(wt, base))
    cli.reset_to(wt, BRANCH, base)
    # The branch moved on under the patch's context lines.
    _write(wt, "src/app.py", LINES.replace("line 3\n", "LINE 3\n"))
    moved = cli.commit(wt, "context moved", {})
    result = cli.apply(wt, patch)
    assert (result.ok, result.three_way) == (True, True)
    text = (wt / "src/app.py").read_text()
    assert "LINE 3" in text and "LINE 5" in text
    assert cli.head(wt) == moved


def test_apply_failure_leaves_the_worktree_clean(
    cli: LocalGitCli, wt: Path, tmp_path: Path
) -> None:
    base = cli.head(wt)
    _write(wt, "src/app.py", LINES.replace("line 5\n", "theirs\n"))
    _write(wt, "src/added.py", "added\n")
    patch = _patch_file(tmp_path, cli.collect_patch(wt, base))
    cli.reset_to(wt, BRANCH, base)
    _write(wt, "src/app.py", LINES.replace("line 5\n", "ours\n"))
    ours = cli.commit(wt, "conflicting change", {})
    result = cli.apply(wt, patch)
    assert (result.ok, result.three_way) == (False, True)
    assert result.message
    assert not cli.is_dirty(wt) and cli.head(wt) == ours
    assert not (wt / "src/added.py").exists()

    garbage = _patch_file(tmp_path, "this is not a patch\n", "garbage.diff")
    assert not cli.apply(wt, garbage).ok
    assert not cli.is_dirty(wt)


def test_apply_empty_or_missing_patch(cli: LocalGitCli, wt: Path, tmp_path: Path) -> None:
    result = cli.apply(wt, _patch_file(tmp_path, ""))
    assert result == type(result)(ok=False, three_way=False, message="empty patch")
    with pytest.raises(GitError, match="does not exist"):
        cli.apply(wt, tmp_path / "missing.diff")


def test_commit_with_trailers_and_find_it(
    cli: LocalGitCli, wt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = cli.head(wt)
    _write(wt, "a.txt", "a\n")
    first = cli.commit(wt, "#1 phase F1\n\nbody", {"Autopack-Run": "r1", "Autopack-Phase": "F1"})
    assert git(wt, "log", "-1", "--format=%B") == (
        "#1 phase F1\n\nbody\n\nAutopack-Run: r1\nAutopack-Phase: F1"
    )
    assert git(wt, "log", "-1", "--format=%an <%ae>|%cn") == (
        f"{DEFAULT_GIT_NAME} <{DEFAULT_GIT_EMAIL}>|{DEFAULT_GIT_NAME}"
    )
    monkeypatch.setenv("AUTOPACK_GIT_NAME", "Run Bot")
    second = cli.commit(wt, "record only", {"Autopack-Phase": "F1"}, allow_empty=True)
    assert git(wt, "log", "-1", "--format=%an") == "Run Bot"

    assert cli.find_commit_with_trailer(BRANCH, "Autopack-Phase", "F1") == second
    assert cli.find_commit_with_trailer(BRANCH, "Autopack-Run", "r1") == first
    assert cli.find_commit_with_trailer(BRANCH, "Autopack-Run", "r1", since=first) is None
    assert cli.find_commit_with_trailer(BRANCH, "Autopack-Run", "r1", since=base) == first
    assert cli.find_commit_with_trailer(BRANCH, "Autopack-Phase", "F") is None
    assert cli.find_commit_with_trailer("main", "Autopack-Run", "r1") is None
    with pytest.raises(GitError, match="branch 'nope' does not exist"):
        cli.find_commit_with_trailer("nope", "Autopack-Run", "r1")


def test_user_hooks_and_config_do_not_leak_into_run_operations(
    cli: LocalGitCli, repo: Path, tmp_path: Path
) -> None:
    hooks = ("pre-commit", "commit-msg", "post-checkout")
    for hook in hooks:
        write_script(repo / ".git/hooks" / hook, f"#!/bin/sh\ntouch {tmp_path}/{hook}\nexit 1\n")
    git(repo, "config", "--global", "commit.gpgSign", "true")
    git(repo, "config", "--global", "diff.noprefix", "true")
    git(repo, "config", "--global", "diff.context", "0")
    path = tmp_path / "w"
    base = cli.ensure_worktree(BRANCH, "main", path)
    _write(path, "src/app.py", LINES.replace("line 5\n", "LINE 5\n"))
    patch = cli.collect_patch(path, base)
    assert "--- a/src/app.py" in patch and " line 4\n" in patch
    cli.reset_to(path, BRANCH, base)
    assert cli.apply(path, _patch_file(tmp_path, patch)).ok
    cli.commit(path, "phase", {"Autopack-Phase": "F1"})
    assert [h for h in hooks if (tmp_path / h).exists()] == []


def test_commit_refuses_nothing_and_bad_trailers(cli: LocalGitCli, wt: Path) -> None:
    with pytest.raises(GitError, match="nothing to commit"):
        cli.commit(wt, "empty", {})
    with pytest.raises(GitError, match="invalid commit trailer"):
        cli.commit(wt, "x", {"Bad Key": "v"}, allow_empty=True)
    with pytest.raises(GitError, match="invalid commit trailer"):
        cli.commit(wt, "x", {"Key": "two\nlines"}, allow_empty=True)
    with pytest.raises(GitError, match="empty commit message"):
        cli.commit(wt, "  ", {}, allow_empty=True)


def test_tag_is_idempotent_and_never_moves(cli: LocalGitCli, wt: Path, repo: Path) -> None:
    first = cli.head(wt)
    name = "autonomous/r1/F1"
    assert cli.tag_target(name) is None
    cli.tag(wt, name, first, "F1 accepted")
    cli.tag(wt, name, first, "F1 accepted")
    assert cli.tag_target(name) == first
    assert git(repo, "cat-file", "-t", f"refs/tags/{name}") == "tag"
    assert git(repo, "tag", "-l", "--format=%(contents:subject)", name) == "F1 accepted"
    second = cli.commit(wt, "next", {}, allow_empty=True)
    with pytest.raises(GitError) as err:
        cli.tag(wt, name, second, "moved")
    assert f"tag '{name}' already points at {first[:12]}" in err.value.message
    assert cli.tag_target(name) == first


def test_integration_status(cli: LocalGitCli, wt: Path, repo: Path) -> None:
    status = cli.integration_status(wt, "main", BRANCH)
    assert (status.ahead, status.behind, status.last_snapshot, status.dirty) == (0, 0, None, False)
    _write(wt, "a.txt", "a\n")
    snap = cli.commit(wt, "phase F1", {"Autopack-Run": "r1", "Autopack-Phase": "F1"})
    tip = cli.commit(wt, "record only", {"Autopack-Run": "r1"}, allow_empty=True)
    _write(repo, "upstream.txt", "upstream\n")
    git(repo, "add", "upstream.txt")
    git(repo, "commit", "-q", "-m", "upstream moved")
    _write(wt, "wip.txt", "uncommitted\n")
    status = cli.integration_status(wt, "main", BRANCH)
    assert (status.ahead, status.behind) == (2, 1)
    assert status.head == tip
    assert status.last_snapshot == snap
    assert status.dirty


def test_assert_clean(cli: LocalGitCli, wt: Path) -> None:
    cli.assert_clean(wt)
    _write(wt, "README.md", "changed\n")
    _write(wt, "intruder.txt", "x\n")
    _write(wt, "ignored.log", "x\n")
    with pytest.raises(GitError) as err:
        cli.assert_clean(wt)
    message = err.value.message
    assert f"worktree {wt} was changed behind the supervisor's back" in message
    assert "README.md" in message and "intruder.txt" in message
    assert "ignored.log" not in message
    assert err.value.fix


def test_remove_worktree_keeps_the_branch(cli: LocalGitCli, wt: Path, tmp_path: Path) -> None:
    _write(wt, "dirty.txt", "x\n")
    cli.remove_worktree(wt)
    assert not wt.exists()
    assert cli.branch_exists(BRANCH)
    cli.remove_worktree(wt)
    stray = tmp_path / "stray"
    stray.mkdir()
    with pytest.raises(GitError, match="not a worktree"):
        cli.remove_worktree(stray)
    assert stray.is_dir()


def test_merge_no_ff(cli: LocalGitCli, wt: Path, tmp_path: Path) -> None:
    _write(wt, "feature.txt", "feature\n")
    tip = cli.commit(wt, "phase F1", {"Autopack-Phase": "F1"})
    release = tmp_path / "release-wt"
    cli.ensure_worktree("release", "main", release)
    merged = cli.merge_no_ff("release", BRANCH, "Promote r1", release)
    assert git(release, "log", "-1", "--format=%P|%s") == f"{cli.resolve('main')} {tip}|Promote r1"
    assert (release / "feature.txt").read_text() == "feature\n"
    assert cli.resolve("release") == merged
    with pytest.raises(GitError, match="checked out, not 'main'"):
        cli.merge_no_ff("main", BRANCH, "x", release)
    with pytest.raises(GitError, match="branch 'nope' does not exist"):
        cli.merge_no_ff("release", "nope", "x", release)


# -- fewer git processes, same guarantees ---------------------------------------------------

REF_NAMES = [
    "a", "a/b", "autonomous/r1", "autonomous/r1/F1.2", "a-b_c.d", "ünï/cöde", "a]b", "a@b", "a@", "{a}",
    "-a", "a/-b", "x.lock.y", "a/b.locked",
    "a//b", "/a", "a/", ".a", "a/.b", "a.lock", "a.lock/b", "a..b", "a/../b", "a/./b", "...",
    "a@{b", "@{", "@", "a b", "a~b", "a^b", "a:b", "a?b", "a*b", "a[b", "a\\b", "a.", "a/b.",
    "a\tb", "a\x7fb", "a\x01b",
]


@pytest.mark.parametrize("prefix", ["refs/heads/", "refs/tags/", ""])
def test_ref_names_are_judged_like_git_check_ref_format(prefix: str, tmp_path: Path) -> None:
    for name in REF_NAMES:
        full = prefix + name
        by_git = _git_ok(tmp_path, "check-ref-format", full)
        assert valid_ref_name(full) == by_git, f"{full!r}: git says {by_git}"


def _git_ok(cwd: Path, *args: str) -> bool:
    import subprocess

    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False).returncode == 0


def _count_git(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The git subcommands the product runs from now on (the real calls, only counted)."""
    import pipeline.core.proc

    calls: list[str] = []
    real = pipeline.core.proc.run

    def counting(argv: object, *args: object, **kwargs: object) -> pipeline.core.proc.ProcResult:
        if isinstance(argv, list) and argv[:1] == ["git"]:
            calls.append(next(a for a in argv[1:] if not a.startswith("-") and "=" not in a))
        return real(argv, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline.core.proc, "run", counting)
    return calls


def test_a_verified_worktree_is_checked_again_when_its_git_file_changes(
    cli: LocalGitCli, repo: Path
) -> None:
    # Inside the user's checkout: without its .git file, git would walk up to the checkout.
    inside = repo / ".autopack" / "worktrees" / "r2"
    base = cli.ensure_worktree("autonomous/r2", "main", inside)
    cli.reset_to(inside, "autonomous/r2", base)  # verified and cached
    _write(repo, "README.md", "user edit\n")

    def user_state() -> dict[str, object]:
        state = _user_state(repo)
        files = state["files"]
        assert isinstance(files, dict)
        return {**state, "files": {k: v for k, v in files.items() if not k.startswith(".autopack")}}

    before = user_state()
    pointer = (inside / ".git").read_bytes()

    (inside / ".git").unlink()
    with pytest.raises(GitError, match="not the top of a git worktree"):
        cli.reset_to(inside, "autonomous/r2", base)
    (inside / ".git").write_bytes(b"gitdir: " + str(repo / ".git").encode() + b"\n")
    with pytest.raises(GitError, match="user's checkout"):
        cli.reset_to(inside, "autonomous/r2", base)
    with pytest.raises(GitError, match="user's checkout"):
        cli.collect_patch(inside, base)
    assert user_state() == before

    (inside / ".git").write_bytes(pointer)
    cli.reset_to(inside, "autonomous/r2", base)
    assert cli.head(inside) == base


def test_reset_to_a_clean_worktree_asks_git_once(
    cli: LocalGitCli, wt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = cli.head(wt)
    cli.reset_to(wt, BRANCH, base)
    calls = _count_git(monkeypatch)
    cli.reset_to(wt, BRANCH, base)
    assert calls == ["status"]

    # Anything there (here an ignored file) means a real reset.
    _write(wt, "build.log", "ignored, still removed\n")
    calls.clear()
    cli.reset_to(wt, BRANCH, base)
    assert calls == ["status", "checkout", "clean"]
    assert not (wt / "build.log").exists()

    # After an applied patch no status is needed first: it is known to be dirty.
    _write(wt, "README.md", "changed\n")
    patch = _patch_file(tmp_path, cli.collect_patch(wt, base))
    cli.reset_to(wt, BRANCH, base)
    assert cli.apply(wt, patch).ok
    calls.clear()
    cli.reset_to(wt, BRANCH, base)
    assert calls == ["checkout", "clean"]
    assert (wt / "README.md").read_text() == "sample\n" and not cli.is_dirty(wt)


def test_a_phase_commit_and_tag_cost_three_git_calls(
    cli: LocalGitCli, wt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli.head(wt)
    calls = _count_git(monkeypatch)
    _write(wt, "a.txt", "a\n")
    sha = cli.commit(wt, "phase", {"Autopack-Phase": "F1"})
    cli.tag(wt, "autonomous/r1/F1", sha, "F1")
    assert calls == ["add", "commit", "tag"]
    assert sha == git(wt, "rev-parse", "HEAD") == cli.head(wt)
    assert cli.tag_target("autonomous/r1/F1") == sha


def test_commit_changes_only_when_something_changed(cli: LocalGitCli, wt: Path) -> None:
    base = cli.head(wt)
    assert cli.commit_changes(wt, "record", {"Autopack-Run": "r1"}) is False
    assert cli.head(wt) == base
    _write(wt, "runs/r1/run.json", "{}\n")
    assert cli.commit_changes(wt, "record", {"Autopack-Run": "r1"}) is True
    assert git(wt, "log", "-1", "--format=%B") == "record\n\nAutopack-Run: r1"
    assert git(wt, "show", "--format=", "--name-only", "HEAD") == "runs/r1/run.json"


def test_missing_commits_are_named_after_the_failing_call(cli: LocalGitCli, wt: Path) -> None:
    gone = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(GitError, match=f"commit '{gone}' does not exist"):
        cli.reset_to(wt, BRANCH, gone)
    with pytest.raises(GitError, match=f"base commit '{gone}' does not exist"):
        cli.collect_patch(wt, gone)
    with pytest.raises(GitError, match=f"commit '{gone}' does not exist"):
        cli.tag(wt, "autonomous/r1/F9", gone, "F9")
    with pytest.raises(GitError, match=f"commit '{gone}' does not exist"):
        cli.find_commit_with_trailer(BRANCH, "Autopack-Phase", "F1", since=gone)
    tree = git(wt, "rev-parse", "HEAD^{tree}")
    with pytest.raises(GitError, match=f"commit '{tree}' does not exist"):
        cli.reset_to(wt, BRANCH, tree)


def test_head_follows_what_git_says(cli: LocalGitCli, wt: Path) -> None:
    """HEAD read from git's files agrees with git, also when git has packed the ref."""
    first = cli.head(wt)
    assert first == git(wt, "rev-parse", "HEAD")
    second = cli.commit(wt, "next", {}, allow_empty=True)
    git(wt, "pack-refs", "--all")
    assert cli.head(wt) == second == git(wt, "rev-parse", "HEAD")
    git(wt, "checkout", "-q", "--detach", first)
    assert cli.head(wt) == first


def _for_each_ref(repo: Path) -> dict[str, str]:
    out = git(repo, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads", "refs/tags", "refs/stash")
    return {name: sha for sha, _, name in (line.partition(" ") for line in out.splitlines() if line)}


def _git_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The argv of every git process started from now on (each still runs)."""
    from pipeline.core import proc

    calls: list[list[str]] = []
    real = proc.run

    def run(argv, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(list(argv))
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(proc, "run", run)
    return calls


def test_refs_state_reads_loose_and_packed_refs_without_git(
    cli: LocalGitCli, repo: Path, wt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Branches, tags (annotated, packed, nested) and the stash as `for-each-ref` shows
    them, read from git's files: a loose ref wins over its packed line, lock files and
    other refs are not refs of the user's."""
    git(repo, "branch", "feature/deep")
    git(repo, "tag", "-a", "-m", "annotated", "v1")
    git(repo, "tag", "light")
    git(repo, "pack-refs", "--all")
    (repo / "README.md").write_text("moved on\n")
    git(repo, "commit", "-qam", "after the pack")
    git(repo, "branch", "-f", "feature/deep", "HEAD")  # loose now, over its packed line
    git(repo, "tag", "-a", "-m", "loose", "v2")
    (repo / "README.md").write_text("stashed\n")
    git(repo, "stash")
    git(repo, "update-ref", "refs/autopack/quarantine/x", "HEAD")  # not a branch or tag
    (repo / ".git" / "refs" / "heads" / "half.lock").write_text("")  # a lock git skips too
    calls = _git_calls(monkeypatch)
    state = cli.refs_state()
    assert calls == []
    assert state.refs == _for_each_ref(repo)
    assert {"refs/heads/feature/deep", "refs/tags/v1", "refs/tags/v2", "refs/stash"} <= set(state.refs)


def test_refs_state_asks_git_for_refs_it_cannot_read_as_files(
    cli: LocalGitCli, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A symbolic ref (or anything else but a sha per file) is git's to interpret."""
    git(repo, "symbolic-ref", "refs/heads/alias", "refs/heads/main")
    calls = _git_calls(monkeypatch)
    state = cli.refs_state()
    assert [c for c in calls if "for-each-ref" in c]
    assert state.refs == _for_each_ref(repo)


def test_changed_paths_are_what_collect_patch_shows_from_one_status_that_writes_nothing(
    cli: LocalGitCli, wt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staged, unstaged, deleted and untracked paths (not ignored ones), with spaces and
    non-ASCII kept as they are; one read-only `git status`."""
    git(wt, "rm", "-q", "README.md")
    (wt / "src" / "app.py").write_text("changed\n")
    (wt / "new dir").mkdir()
    (wt / "new dir" / "café ü.txt").write_text("new\n")
    (wt / "debug.log").write_text("ignored\n")
    git(wt, "add", "src/app.py")
    (wt / "src" / "app.py").write_text("changed again\n")
    index = Path(git(wt, "rev-parse", "--git-path", "index").strip())
    index = index if index.is_absolute() else wt / index
    stamp = index.stat().st_mtime_ns
    calls = _git_calls(monkeypatch)
    paths = cli.changed_paths(wt)
    assert len(calls) == 1 and "status" in calls[0]
    assert index.stat().st_mtime_ns == stamp
    assert paths == ["README.md", "new dir/café ü.txt", "src/app.py"]
    from pipeline.gate.patch import parse_patch

    monkeypatch.undo()
    assert parse_patch(cli.collect_patch(wt, cli.head(wt))).touched_paths == paths


def _worktree_state(wt: Path) -> tuple[object, ...]:
    """What a snapshot commit is made from: HEAD, the index, every file (with its mode and
    symlinks), and what git reports as changed, untracked or ignored."""
    status = git(wt, "status", "--porcelain=v2", "--branch", "--untracked-files=all", "--ignored=traditional")
    files = {
        str(p.relative_to(wt)): (p.lstat().st_mode, os.readlink(p) if p.is_symlink() else p.read_bytes())
        for p in sorted(wt.rglob("*"))
        if p.relative_to(wt).parts[0] != ".git" and not p.is_dir()
    }
    return git(wt, "ls-files", "-s"), status, files


def _gated_patch(cli: LocalGitCli, wt: Path, tmp_path: Path) -> tuple[str, Path]:
    """A patch touching every kind of entry (modified, added, deleted, executable, binary,
    symlink, a name with a space), as the builder step collects it; the worktree back at base."""
    base = cli.head(wt)
    _write(wt, "src/app.py", LINES.replace("line 5\n", "LINE 5\n"))
    _write(wt, "new dir/new file.txt", "new\n")
    (wt / "README.md").unlink()
    _write(wt, "tool.sh", "#!/bin/sh\n")
    (wt / "tool.sh").chmod(0o755)
    (wt / "blob.bin").write_bytes(bytes(range(256)))
    (wt / "link").symlink_to("src/app.py")
    patch = _patch_file(tmp_path, cli.collect_patch(wt, base))
    cli.reset_to(wt, BRANCH, base)
    return base, patch


def test_reapply_over_the_gated_patch_asks_git_once(
    cli: LocalGitCli, wt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, patch = _gated_patch(cli, wt, tmp_path)
    assert cli.apply(wt, patch).ok
    expected = _worktree_state(wt)
    calls = _count_git(monkeypatch)
    assert cli.reapply(wt, BRANCH, base, patch).ok
    assert calls == ["status"]
    assert _worktree_state(wt) == expected

    # CI's leftovers (ignored and untracked) go with one `git clean`, as a reset removes them.
    _write(wt, "build.log", "ignored\n")
    _write(wt, "out/report.txt", "untracked\n")
    calls.clear()
    assert cli.reapply(wt, BRANCH, base, patch).ok
    assert calls == ["status", "clean"]
    assert _worktree_state(wt) == expected
    sha = cli.commit(wt, "phase", {"Autopack-Phase": "F1"})
    assert git(wt, "show", "--name-status", "--format=", sha).splitlines() == [
        "D\tREADME.md",
        "A\tblob.bin",
        "A\tlink",
        "A\tnew dir/new file.txt",
        "M\tsrc/app.py",
        "A\ttool.sh",
    ]


@pytest.mark.parametrize(
    "meddle",
    [
        "edit_patched",
        "edit_untouched",
        "stage_other",
        "unstage",
        "commit",
        "switch_branch",
        "chmod",
        "not_applied",
    ],
)
def test_reapply_resets_and_applies_whatever_ci_changed(
    meddle: str, cli: LocalGitCli, wt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, patch = _gated_patch(cli, wt, tmp_path)
    assert cli.apply(wt, patch).ok
    expected = _worktree_state(wt)
    if meddle == "edit_patched":
        _write(wt, "src/app.py", "reformatted by CI\n")
    elif meddle == "edit_untouched":
        _write(wt, ".gitignore", "*.log\n*.tmp\n")
    elif meddle == "stage_other":
        _write(wt, "staged.txt", "x\n")
        git(wt, "add", "staged.txt")
    elif meddle == "unstage":
        git(wt, "reset", "-q", "--", "src/app.py")
    elif meddle == "commit":
        git(wt, "commit", "-q", "-m", "CI committed")
    elif meddle == "switch_branch":
        git(wt, "checkout", "-q", "-b", "elsewhere")
    elif meddle == "chmod":
        (wt / "tool.sh").chmod(0o644)
    else:
        cli.reset_to(wt, BRANCH, base)
    calls = _count_git(monkeypatch)
    assert cli.reapply(wt, BRANCH, base, patch).ok
    assert calls[0] == "status" and "apply" in calls
    assert _worktree_state(wt) == expected
    assert git(wt, "symbolic-ref", "--short", "HEAD") == BRANCH


def test_reapply_of_a_patch_without_full_blob_names_applies_it(
    cli: LocalGitCli, wt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = cli.head(wt)
    _write(wt, "src/app.py", LINES.replace("line 5\n", "LINE 5\n"))
    (wt / "README.md").chmod(0o755)  # a mode-only change has no index line at all
    short = _patch_file(tmp_path, git(wt, "diff", "HEAD") + "\n")
    cli.reset_to(wt, BRANCH, base)
    assert cli.apply(wt, short).ok
    expected = _worktree_state(wt)
    calls = _count_git(monkeypatch)
    assert cli.reapply(wt, BRANCH, base, short).ok
    assert "apply" in calls
    assert _worktree_state(wt) == expected


def test_post_images_name_what_git_stages(cli: LocalGitCli, wt: Path, tmp_path: Path) -> None:
    from pipeline.vcs.local import _post_images

    base, patch = _gated_patch(cli, wt, tmp_path)
    assert cli.apply(wt, patch).ok
    staged = {}
    raw = git(wt, "diff", "--cached", "--raw", "--no-abbrev", "--no-renames", base)
    for line in raw.splitlines():
        meta, _, path = line.partition("\t")
        _, new_mode, _, new_blob, _ = meta.split(" ")
        staged[path] = (new_mode, new_blob)
    assert _post_images(patch.read_bytes()) == staged
    assert _post_images(b"--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n") is None
    assert _post_images(b"") is None


def _ls_files_symlinks(wt: Path) -> list[str]:
    out = git(wt, "ls-files", "-s", "-z")
    return sorted(e.partition("\t")[2] for e in out.split("\0") if e.startswith("120000 "))


def _index_of(wt: Path) -> Path:
    return Path(git(wt, "rev-parse", "--path-format=absolute", "--git-path", "index"))


def _add_symlink_entries(wt: Path) -> None:
    """Symlinks (and other entries) straight into the index, names the filesystem would
    refuse included (over 0xFFF bytes, which the entry's length field cannot hold)."""
    blob = git(wt, "hash-object", "-w", "--stdin")
    deep = "/".join(["d" * 200] * 25) + "/deep link"
    for mode, name in [("120000", "a link"), ("120000", "sub/b"), ("100755", "tool"), ("120000", deep)]:
        git(wt, "update-index", "--add", "--cacheinfo", f"{mode},{blob},{name}")
    _write(wt, "later.txt", "x\n")
    git(wt, "add", "--intent-to-add", "later.txt")  # an extended flag: the index becomes v3


@pytest.mark.parametrize("version", ["2", "3", "4"])
def test_tracked_symlinks_read_from_the_index_as_git_lists_them(
    version: str, cli: LocalGitCli, wt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (wt / "link").symlink_to("README.md")
    git(wt, "add", "link")
    if version != "3":
        _add_symlink_entries(wt)
    if version == "2":
        git(wt, "rm", "-q", "--cached", "later.txt")
    git(wt, "update-index", "--index-version", version)
    if version == "3":
        _add_symlink_entries(wt)
    assert _index_of(wt).read_bytes()[4:8] == int(version).to_bytes(4, "big")
    cli.head(wt)
    calls = _count_git(monkeypatch)
    found = cli.tracked_symlinks(wt)
    assert calls == []
    assert found == _ls_files_symlinks(wt) and "link" in found and len(found) >= (1 if version == "3" else 4)


@pytest.mark.parametrize("kind", ["corrupt", "split", "skip_hash", "large", "required_extension"])
def test_tracked_symlinks_ask_git_about_an_index_it_does_not_read(
    kind: str, cli: LocalGitCli, wt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (wt / "link").symlink_to("README.md")
    git(wt, "add", "link")
    index = _index_of(wt)
    if kind == "corrupt":  # one flipped bit in a mode: the checksum no longer matches
        data = bytearray(index.read_bytes())
        data[12 + 24 + 2] ^= 0x20
        index.write_bytes(bytes(data))
    elif kind == "split":
        git(wt, "update-index", "--split-index")
    elif kind == "skip_hash":  # what index.skipHash (git 2.40) writes: no checksum
        index.write_bytes(index.read_bytes()[:-20] + bytes(20))
    elif kind == "required_extension":  # lower case: one git must understand (git refuses it)
        import hashlib

        body = index.read_bytes()[:-20] + b"zzzz" + bytes(4)
        index.write_bytes(body + hashlib.sha1(body).digest())
    else:
        blob = git(wt, "hash-object", "-w", "--stdin")
        lines = "".join(f"100644 {blob}\tmany/{i:05d}\n" for i in range(2100))
        import subprocess

        subprocess.run(["git", "update-index", "--index-info"], cwd=wt, input=lines, text=True, check=True)
    cli.head(wt)
    calls = _count_git(monkeypatch)
    try:
        found: list[str] | None = cli.tracked_symlinks(wt)
    except GitError:  # git found the index corrupt (or too new for it): its answer either way
        found = None
    assert calls == ["ls-files"]
    if kind in ("split", "large"):
        assert found == _ls_files_symlinks(wt) == ["link"]


def test_tracked_symlinks_of_a_sha256_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "sha256"
    repo.mkdir()
    git(repo, "init", "-q", "--object-format=sha256", "-b", "main")
    (repo / "README.md").write_text("x\n")
    (repo / "link").symlink_to("README.md")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    cli = LocalGitCli(repo)
    wt = tmp_path / "wt"
    cli.ensure_worktree(BRANCH, "main", wt)
    calls = _count_git(monkeypatch)
    assert cli.tracked_symlinks(wt) == ["link"]
    assert calls == []


def test_git_version_is_asked_once_per_binary(
    cli: LocalGitCli, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = cli.check_available()
    calls = _count_git(monkeypatch)  # a `git --version` call would fail it (no subcommand)
    assert LocalGitCli(repo).check_available() == version
    assert calls == []
    monkeypatch.undo()

    # Another git on PATH (here one too old) is asked, and judged, again.
    fake = tmp_path / "old-bin"
    fake.mkdir()
    write_script(fake / "git", "#!/bin/sh\necho 'git version 2.20.1'\n")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(GitError, match="too old"):
        LocalGitCli(repo).check_available()
    with pytest.raises(GitError, match="too old"):
        cli.check_available()
    monkeypatch.undo()
    assert cli.check_available() == version


def test_reapply_removes_a_stale_index_lock(cli: LocalGitCli, wt: Path, tmp_path: Path) -> None:
    base, patch = _gated_patch(cli, wt, tmp_path)
    assert cli.apply(wt, patch).ok
    lock = Path(git(wt, "rev-parse", "--path-format=absolute", "--git-path", "index.lock"))
    lock.write_text("")  # a CI step's git killed mid-command
    assert cli.reapply(wt, BRANCH, base, patch).ok
    assert cli.commit(wt, "phase", {"Autopack-Phase": "F1"}) == cli.head(wt)


def test_reapply_knows_an_added_and_a_deleted_empty_file(
    cli: LocalGitCli, wt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = cli.head(wt)
    _write(wt, "empty.txt", "")
    patch = _patch_file(tmp_path, cli.collect_patch(wt, base))
    assert "@@" not in patch.read_text()  # a section without hunks
    cli.reset_to(wt, BRANCH, base)
    assert cli.apply(wt, patch).ok
    calls = _count_git(monkeypatch)
    assert cli.reapply(wt, BRANCH, base, patch).ok
    assert calls == ["status"]
    assert (wt / "empty.txt").read_bytes() == b""
