"""The gate against real worktrees: real git diffs in, LocalGitCli applying, real commands."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.gate.patch import PatchParseError, parse_patch
from pipeline.gate.paths import MAX_LINE_CHARS, MAX_PATCH_BYTES
from pipeline.gate.secrets import check_secrets
from pipeline.gate.verdict import CHECK_ORDER, feedback_for, run_gate
from pipeline.models.enums import BuilderMode, CiProfileName, Complexity, Severity
from pipeline.models.plan import CiStep
from pipeline.models.reports import GateCheck, GateReport
from pipeline.models.strategy import PhaseStrategy
from pipeline.vcs.adapter import encode_patch
from pipeline.vcs.local import LocalGitCli
from testing.gitrepo import git, make_repo

BRANCH = "autonomous/r1"
APP = "def f():\n    return 1\n"
TEST_APP = "from src.app import f\n\n\ndef test_f():\n    assert f() == 1\n"
LINES = "".join(f"line {i}\n" for i in range(1, 11))
PROTECTED = [
    ".git/", "runs/", ".github/workflows/", ".gitlab-ci.yml", "profiles/", "schemas/", "dodo.py",
]
FAKE_AWS_KEY = "AKIAIOSFODNN7EXAMPLE"


@dataclass(frozen=True)
class Env:
    tmp: Path
    repo: Path
    wt: Path
    cli: LocalGitCli
    base: str


@pytest.fixture
def env(tmp_path: Path) -> Env:
    repo = make_repo(
        tmp_path / "repo",
        {
            "README.md": "sample\n",
            "src/app.py": APP,
            "src/lines.txt": LINES,
            "tests/test_app.py": TEST_APP,
        },
    )
    wt = tmp_path / "wt"
    # git directly rather than ensure_worktree: same linked worktree, a third of the spawns.
    git(repo, "worktree", "add", "-q", "-b", BRANCH, str(wt))
    return Env(tmp_path, repo, wt, LocalGitCli(repo), git(wt, "rev-parse", "HEAD"))


def make_phase(**changes: Any) -> PhaseStrategy:
    fields: dict[str, Any] = {
        "phase_id": "F1.1",
        "tier_id": "T1",
        "index": 1,
        "name": "Add a feature",
        "task_category": "feature_scaffolding",
        "requested_category": "feature_scaffolding",
        "complexity": Complexity.medium,
        "builder_mode": BuilderMode.scaffolding_heavy,
        "high_risk": False,
        "default_severity": Severity.minor,
        "ci_profile": CiProfileName.normal,
        "auto_apply": True,
        "auditor_profile": None,
        "max_builder_attempts": 3,
        "max_auditor_attempts": 1,
        "incident_token_cap": 100_000,
        "builder_timeout_s": 60,
        "max_files": None,
        "max_changed_lines": None,
        "scope_allow": ["**"],
        "scope_deny": [],
        "builder": None,
        "auditor": None,
    }
    fields.update(changes)
    return PhaseStrategy(**fields)


def write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def make_patch(env: Env, change: Callable[[Path], None]) -> str:
    """The diff `change` makes in the worktree (flags as in collect_patch); then reset."""
    change(env.wt)
    out = env.tmp / "made.diff"
    git(env.wt, "add", "-A")
    # To a file: git() strips output, and a binary patch must keep its final blank line.
    flags = ("--cached", "--binary", "--full-index", "--no-renames", f"--output={out}")
    git(env.wt, "diff", *flags, "HEAD")
    git(env.wt, "reset", "-q", "--hard", "HEAD")
    git(env.wt, "clean", "-fdxq")
    return out.read_text()


def writes(files: dict[str, str]) -> Callable[[Path], None]:
    """A change writing `files` (relative path -> text)."""

    def change(root: Path) -> None:
        for rel, text in files.items():
            write(root, rel, text)

    return change


def _new_file(path: str, *lines: str) -> str:
    body = "".join(f"+{line}\n" for line in lines)
    return (
        f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n"
        f"@@ -0,0 +1,{len(lines)} @@\n{body}"
    )


def gate(
    env: Env,
    text: str,
    phase: PhaseStrategy | None = None,
    static: list[CiStep] | None = None,
) -> GateReport:
    patch_path = env.tmp / "attempt" / "patch.diff"
    patch_path.parent.mkdir(exist_ok=True)
    patch_path.write_bytes(encode_patch(text))
    return run_gate(
        patch_text=text,
        patch_path=patch_path,
        worktree=env.wt,
        phase=phase or make_phase(),
        protected_paths=PROTECTED,
        static_checks=static or [],
        git=env.cli,
        attempt=2,
        log_dir=env.tmp / "gate-logs",
    )


def check(report: GateReport, name: str) -> GateCheck:
    return next(c for c in report.checks if c.name == name)


def assert_failed_at(report: GateReport, name: str) -> GateCheck:
    """`name` failed, every check before it passed and every one after it was skipped."""
    assert report.verdict == "fail"
    assert [c.name for c in report.checks] == list(CHECK_ORDER)
    at = CHECK_ORDER.index(name)
    assert [c.verdict for c in report.checks] == (
        ["pass"] * at + ["fail"] + ["skip"] * (len(CHECK_ORDER) - at - 1)
    )
    for skipped in report.checks[at + 1 :]:
        assert f"`{name}` failed" in skipped.message
    return check(report, name)


# --------------------------------------------------------------------------- passing


def test_a_good_patch_passes_every_check_and_is_applied(env: Env) -> None:
    change = writes({"src/app.py": "def f():\n    return 2\n", "src/util.py": "X = 1\n"})
    text = make_patch(env, change)
    static = [CiStep(name="sees the patch", run="grep -q 'return 2' src/app.py")]
    report = gate(env, text, static=static)
    assert report.verdict == "pass", report.model_dump_json(indent=2)
    assert [c.name for c in report.checks] == list(CHECK_ORDER)
    assert all(c.verdict == "pass" for c in report.checks)
    assert report.touched_paths == ["src/app.py", "src/util.py"]
    assert report.phase_id == "F1.1" and report.attempt == 2
    assert not report.three_way and not report.policy_violation
    assert check(report, "apply").message == "applied cleanly"
    assert (env.wt / "src/util.py").read_text() == "X = 1\n"
    assert (env.tmp / "gate-logs" / "static-sees_the_patch.log").is_file()
    assert [c.policy for c in report.checks] == [
        n in ("paths_safe", "protected_paths", "scope", "secrets", "applied_paths") for n in CHECK_ORDER
    ]
    assert "accepted" in feedback_for(report)
    GateReport.model_validate_json(report.model_dump_json())  # gate.json round-trips


def test_no_static_checks_is_a_pass(env: Env) -> None:
    report = gate(env, make_patch(env, writes({"src/app.py": "x = 1\n"})))
    static = check(report, "static_checks")
    assert (static.verdict, static.message) == ("pass", "no static checks")
    assert not (env.tmp / "gate-logs").exists()


def test_three_way_fallback_is_recorded(env: Env) -> None:
    text = make_patch(env, writes({"src/lines.txt": LINES.replace("line 2\n", "line two\n")}))
    # The branch moves on under the patch: line 4 is in the patch's context, so only a
    # 3-way merge can apply it.
    write(env.wt, "src/lines.txt", LINES.replace("line 4\n", "line four\n"))
    git(env.wt, "commit", "-qam", "moved on")
    report = gate(env, text)
    assert report.verdict == "pass", report.model_dump_json(indent=2)
    assert report.three_way
    assert "3-way" in check(report, "apply").message
    assert "line two" in (env.wt / "src/lines.txt").read_text()


# --------------------------------------------------------------------------- parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("   \n\n", "empty"),
        ("this is not a patch\nat all\n", "no file changes"),
        (
            "diff --git a/src/app.py b/src/app.py\n--- a/src/app.py\n+++ b/src/app.py\n"
            "@@ -1,2 +1,3 @@\n def f():\n+    pass\n",
            "malformed",
        ),
        (
            "diff --git a/src/app.py b/src/app.py\n--- a/README.md\n+++ b/README.md\n"
            "@@ -1 +1 @@\n-sample\n+changed\n",
            "disagrees",
        ),
        ("diff --git a/README.md b/README.md\nindex 1111111..2222222 100644\n", "nothing"),
    ],
    ids=["empty", "blank", "prose", "truncated-hunk", "inconsistent-names", "no-op"],
)
def test_an_unparseable_patch_fails_parse(env: Env, text: str, expected: str) -> None:
    with pytest.raises(PatchParseError) as err:
        parse_patch(text)
    assert expected in err.value.message
    report = gate(env, text)
    failed = assert_failed_at(report, "parse")
    assert expected in failed.message
    assert report.touched_paths == []
    assert not env.cli.is_dirty(env.wt)
    assert "`parse`" in feedback_for(report)


def test_parse_reads_git_diff_details(env: Env) -> None:
    git(env.wt, "mv", "src/lines.txt", "src/renamed lines.txt")
    write(env.wt, "src/app.py", "def f():\n    return 1\n\n\ndef g():\n    return 2\n")
    os.symlink("app.py", env.wt / "src/alias.py")
    (env.wt / "README.md").chmod(0o755)
    (env.wt / "tests/test_app.py").unlink()
    git(env.wt, "add", "-A")
    text = git(env.wt, "diff", "--cached", "-M", "HEAD") + "\n"
    env.cli.reset_to(env.wt, BRANCH, env.base)

    files = {fc.path: fc for fc in parse_patch(text).files}
    assert set(files) == {
        "README.md", "src/alias.py", "src/app.py", "src/renamed lines.txt", "tests/test_app.py",
    }
    renamed = files["src/renamed lines.txt"]
    assert (renamed.status, renamed.old_path) == ("renamed", "src/lines.txt")
    mode_only = files["README.md"]
    assert (mode_only.status, mode_only.new_mode, mode_only.changed_lines) == (
        "modified", "100755", 0,
    )
    link = files["src/alias.py"]
    assert (link.status, link.new_mode, link.symlink_target) == ("added", "120000", "app.py")
    app = files["src/app.py"]
    assert [(ln.number, ln.text) for ln in app.added_lines] == [
        (3, ""), (4, ""), (5, "def g():"), (6, "    return 2"),
    ]
    assert files["tests/test_app.py"].status == "deleted"
    assert len(files["tests/test_app.py"].removed_lines) == 5
    assert parse_patch(text).touched_paths == sorted([*files, "src/lines.txt"])


def test_parse_unquotes_git_quoted_names(env: Env) -> None:
    text = make_patch(env, writes({'src/sp ace "q".txt': "x\n", "src/café.txt": "y\n"}))
    assert sorted(fc.path for fc in parse_patch(text).files) == [
        "src/café.txt", 'src/sp ace "q".txt',
    ]


def test_a_binary_patch_parses_and_applies(env: Env) -> None:
    blob = bytes(range(256)) * 4

    def add_binary(root: Path) -> None:
        (root / "src/logo.bin").write_bytes(blob)

    text = make_patch(env, add_binary)
    assert "GIT binary patch" in text
    (change,) = parse_patch(text).files
    assert (change.path, change.status, change.is_binary) == ("src/logo.bin", "added", True)
    report = gate(env, text)
    assert report.verdict == "pass", report.model_dump_json(indent=2)
    assert (env.wt / "src/logo.bin").read_bytes() == blob


def test_a_traditional_diff_hidden_before_git_sections_is_checked(env: Env) -> None:
    # git apply applies every patch in its input, git-style or not: so must the gate see them.
    hidden = (
        "Subject: harmless\n\n"
        "--- a/.github/workflows/ci.yml\n+++ b/.github/workflows/ci.yml\n"
        "@@ -0,0 +1 @@\n+on: push\n"
    )
    text = hidden + make_patch(env, writes({"src/app.py": "x = 1\n"}))
    assert ".github/workflows/ci.yml" in parse_patch(text).touched_paths
    assert_failed_at(gate(env, text), "protected_paths")


def test_a_traditional_diff_after_a_git_sections_hunks_is_checked(env: Env) -> None:
    text = make_patch(env, writes({"src/app.py": "x = 1\n"})) + (
        "--- a/runs/R/run.json\n+++ b/runs/R/run.json\n@@ -0,0 +1 @@\n+{}\n"
    )
    assert parse_patch(text).touched_paths == ["runs/R/run.json", "src/app.py"]
    assert_failed_at(gate(env, text), "protected_paths")


def test_crlf_patches_parse_to_the_same_files(env: Env) -> None:
    text = make_patch(env, writes({"src/app.py": "x = 1\n", "src/new.py": "y = 2\n"}))
    plain = parse_patch(text)
    crlf = parse_patch(text.replace("\n", "\r\n"))
    assert [(f.path, f.status, f.changed_lines) for f in crlf.files] == [
        (f.path, f.status, f.changed_lines) for f in plain.files
    ]


# --------------------------------------------------------------------------- paths_safe


def test_a_path_through_dotdot_is_refused(env: Env) -> None:
    text = (
        "diff --git a/../outside b/../outside\n"
        "new file mode 100644\n"
        "--- /dev/null\n"
        "+++ b/../outside\n"
        "@@ -0,0 +1 @@\n"
        "+escaped\n"
    )
    report = gate(env, text)
    failed = assert_failed_at(report, "paths_safe")
    assert failed.policy and report.policy_violation
    assert any(e.startswith("../outside") and "`..`" in e for e in failed.evidence)
    assert not (env.tmp / "outside").exists()


def test_a_write_through_a_symlinked_directory_out_of_the_worktree_is_refused(
    env: Env,
) -> None:
    outside = env.tmp / "outside"
    outside.mkdir()
    text = make_patch(env, writes({"link/x": "payload\n"}))
    os.symlink(outside, env.wt / "link")
    git(env.wt, "add", "link")
    git(env.wt, "commit", "-qm", "a link out of the worktree")
    failed = assert_failed_at(gate(env, text), "paths_safe")
    assert any(e.startswith("link/x") and "symlink" in e for e in failed.evidence)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    ("link", "target"),
    [("pw", "/etc/passwd"), ("src/up", "../../outside"), ("src/hook", "../.git/config")],
)
def test_a_patch_creating_a_symlink_out_of_the_repository_is_refused(
    env: Env, link: str, target: str
) -> None:
    text = make_patch(env, lambda root: os.symlink(target, root / link))
    (change,) = parse_patch(text).files
    assert change.symlink_target == target
    failed = assert_failed_at(gate(env, text), "paths_safe")
    assert failed.evidence == [failed.evidence[0]]
    assert failed.evidence[0].startswith(f"{link}: symlink")
    assert target in failed.evidence[0]
    assert not (env.wt / link).is_symlink()


def test_a_symlink_inside_the_repository_is_fine(env: Env) -> None:
    text = make_patch(env, lambda root: os.symlink("app.py", root / "src/alias.py"))
    report = gate(env, text)
    assert report.verdict == "pass", report.model_dump_json(indent=2)
    assert os.readlink(env.wt / "src/alias.py") == "app.py"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/etc/cron.d/job", "absolute path"),
        (".git/hooks/pre-commit", "inside .git"),
        ("src/.GIT/config", "inside .git"),
        ("src/../../outside", "`..` component"),
    ],
)
def test_unsafe_names_are_refused(env: Env, path: str, reason: str) -> None:
    text = _new_file(path, "x")
    failed = assert_failed_at(gate(env, text), "paths_safe")
    assert failed.evidence == [f"{path}: {reason}"]


def test_a_path_through_a_symlink_inside_the_worktree_is_refused(env: Env) -> None:
    # Inside or not, the name would dodge the protected and scope globs of the real path.
    text = make_patch(env, writes({"alias/x.py": "x = 1\n"}))
    os.symlink("src", env.wt / "alias")
    failed = assert_failed_at(gate(env, text), "paths_safe")
    assert failed.evidence == ["alias/x.py: parent directory alias is a symlink to src"]


def test_moving_a_relative_symlink_out_of_range_is_refused(env: Env) -> None:
    os.makedirs(env.wt / "src/deep")
    os.symlink("../app.py", env.wt / "src/deep/link")
    git(env.wt, "add", "-A")
    git(env.wt, "commit", "-qm", "a link inside")
    text = (
        "diff --git a/src/deep/link b/link\nsimilarity index 100%\n"
        "rename from src/deep/link\nrename to link\n"
    )
    failed = assert_failed_at(gate(env, text), "paths_safe")
    assert failed.evidence == ["link: symlink '../app.py' points outside the repository"]


def test_a_mode_change_into_a_symlink_is_judged_by_the_files_content(env: Env) -> None:
    text = "diff --git a/README.md b/README.md\nold mode 100644\nnew mode 120000\n"
    (change,) = parse_patch(text).files
    assert (change.new_mode, change.symlink_target) == ("120000", None)
    failed = assert_failed_at(gate(env, text), "paths_safe")
    assert failed.evidence[0].startswith("README.md: symlink with an empty or malformed target")


# --------------------------------------------------------------------------- protected


@pytest.mark.parametrize(
    ("path", "glob"),
    [
        (".github/workflows/x.yml", ".github/workflows/"),
        ("runs/R/run.json", "runs/"),
        ("dodo.py", "dodo.py"),
    ],
)
def test_writes_to_protected_paths_are_refused(env: Env, path: str, glob: str) -> None:
    text = make_patch(env, writes({path: "changed\n"}))
    report = gate(env, text)
    failed = assert_failed_at(report, "protected_paths")
    assert report.policy_violation
    assert failed.evidence == [f"{path} (matches {glob!r})"]
    assert not (env.wt / path).exists()


@pytest.mark.parametrize(
    ("path", "shown", "glob"),
    [
        ("runs//R/./run.json", "runs/R/run.json", "runs/"),
        ("Dodo.PY", "Dodo.PY", "dodo.py"),
    ],
)
def test_protected_paths_cannot_be_dodged_by_spelling(
    env: Env, path: str, shown: str, glob: str
) -> None:
    (change,) = parse_patch(_new_file(path, "x")).files
    assert change.path == shown
    failed = assert_failed_at(gate(env, _new_file(path, "x")), "protected_paths")
    assert failed.evidence == [f"{shown} (matches {glob!r})"]


def test_renaming_a_protected_file_away_is_refused(env: Env) -> None:
    text = (
        "diff --git a/dodo.py b/tasks.py\nsimilarity index 100%\n"
        "rename from dodo.py\nrename to tasks.py\n"
    )
    failed = assert_failed_at(gate(env, text), "protected_paths")
    assert failed.evidence == ["dodo.py (matches 'dodo.py')"]


# --------------------------------------------------------------------------- scope


def test_an_out_of_scope_path_is_refused(env: Env) -> None:
    text = make_patch(env, writes({"README.md": "changed\n", "src/app.py": "x = 1\n"}))
    report = gate(env, text, make_phase(scope_allow=["src/**", "tests/**"]))
    failed = assert_failed_at(report, "scope")
    assert report.policy_violation
    assert failed.evidence == ["README.md (not allowed)"]
    assert "src/**" in failed.message


def test_a_denied_path_is_refused(env: Env) -> None:
    text = make_patch(env, writes({"src/vendor/lib.py": "x = 1\n"}))
    failed = assert_failed_at(gate(env, text, make_phase(scope_deny=["src/vendor/"])), "scope")
    assert failed.evidence == ["src/vendor/lib.py (denied by 'src/vendor/')"]


# --------------------------------------------------------------------------- size


def test_tweak_light_caps_the_number_of_files(env: Env) -> None:
    text = make_patch(env, writes({"src/a.py": "a\n", "src/b.py": "b\n", "src/c.py": "c\n"}))
    phase = make_phase(builder_mode=BuilderMode.tweak_light, max_files=2)
    report = gate(env, text, phase)
    failed = assert_failed_at(report, "size")
    assert not failed.policy and not report.policy_violation
    assert "3 files changed, at most 2 allowed" in failed.message
    assert "src/a.py: 1 line(s)" in failed.evidence
    assert "`size`" in feedback_for(report)


def test_changed_lines_are_capped(env: Env) -> None:
    text = make_patch(env, writes({"src/app.py": "def f():\n    return 2\n"}))  # -1 +1
    assert gate(env, text, make_phase(max_changed_lines=2)).verdict == "pass"
    env.cli.reset_to(env.wt, BRANCH, env.base)
    failed = assert_failed_at(gate(env, text, make_phase(max_changed_lines=1)), "size")
    assert "2 lines added+removed, at most 1 allowed" in failed.message


def test_a_single_huge_line_fails_the_size_check(env: Env) -> None:
    """A 2.7 MB one-line file is within any line-count cap, and still no reviewable change."""
    text = _new_file("src/blob.js", "x" * 2_700_000)
    failed = assert_failed_at(gate(env, text), "size")
    assert f"1 added line(s) longer than {MAX_LINE_CHARS} characters" in failed.message
    assert failed.evidence == ["src/blob.js:1: 2700000 characters"]
    assert gate(env, _new_file("src/ok.js", "x" * MAX_LINE_CHARS)).verdict == "pass"


def test_a_patch_over_the_byte_cap_is_refused_before_it_is_parsed(env: Env) -> None:
    lines = ["y" * 1000] * (MAX_PATCH_BYTES // 1000 + 10)
    report = gate(env, _new_file("src/big.py", *lines))
    assert report.verdict == "fail"
    failed = check(report, "size")
    assert failed.verdict == "fail" and f"at most {MAX_PATCH_BYTES} allowed" in failed.message
    assert check(report, "apply").verdict != "pass", "a patch refused for its size is not applied"


# --------------------------------------------------------------------------- secrets


def test_a_secret_is_refused_and_never_repeated(env: Env) -> None:
    text = make_patch(env, writes({"src/config.py": f'REGION = "eu"\nKEY = "{FAKE_AWS_KEY}"\n'}))
    report = gate(env, text)
    failed = assert_failed_at(report, "secrets")
    assert report.policy_violation
    assert failed.evidence == ["src/config.py:2: AWS access key id AKIA******** (20 chars)"]
    assert FAKE_AWS_KEY not in report.model_dump_json()
    assert FAKE_AWS_KEY not in feedback_for(report)


@pytest.mark.parametrize(
    ("line", "kind", "secret"),
    [
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "private key block", None),
        ("token = 'ghp_" + "a1B2c3D4e5" * 4 + "'", "GitHub token", "a1B2c3D4e5" * 4),
        ("hook = 'xoxb-12345678901-abcdefghijkl'", "Slack token", "12345678901-abcdefghijkl"),
        ('DB_PASSWORD = "q8Zr3vN1xLp0Tg7KwE2s"', "hard-coded DB_PASSWORD", "q8Zr3vN1xLp0Tg7KwE2s"),
        ('"api_key": "9fJ2kLm4Np6Qr8St0Uv"', "hard-coded api_key", "9fJ2kLm4Np6Qr8St0Uv"),
    ],
)
def test_secret_kinds(line: str, kind: str, secret: str | None) -> None:
    result = check_secrets(parse_patch(_new_file("src/settings.py", "# config", line)))
    assert result.verdict == "fail" and result.policy
    (evidence,) = result.evidence
    assert evidence.startswith(f"src/settings.py:2: {kind}")
    if secret is not None:
        assert secret not in evidence


@pytest.mark.parametrize(
    "line",
    [
        'password = "changeme"',
        'token = os.environ["GITHUB_TOKEN"]',
        'api_key = "${API_KEY_FROM_ENVIRONMENT}"',
        'secret = "aaaaaaaaaaaaaaaaaaaaaaaa"',
        "max_tokens = 4096",
    ],
)
def test_ordinary_lines_are_not_secrets(line: str) -> None:
    result = check_secrets(parse_patch(_new_file("src/settings.py", line)))
    assert result.verdict == "pass", result.evidence


# --------------------------------------------------------------------------- tampering


def _delete_test(root: Path) -> None:
    (root / "tests/test_app.py").unlink()


def test_deleting_a_test_file_is_refused(env: Env) -> None:
    report = gate(env, make_patch(env, _delete_test))
    failed = assert_failed_at(report, "test_tampering")
    assert not failed.policy and not report.policy_violation
    assert failed.evidence == ["tests/test_app.py: test file deleted"]


def test_adding_a_skip_marker_is_refused(env: Env) -> None:
    skipped = TEST_APP.replace("def test_f", "import pytest\n\n\n@pytest.mark.skip\ndef test_f")
    text = make_patch(env, writes({"tests/test_app.py": skipped}))
    failed = assert_failed_at(gate(env, text), "test_tampering")
    assert failed.evidence == ["tests/test_app.py:7: adds skip marker `pytest.mark.skip`"]


def test_removing_asserts_is_refused(env: Env) -> None:
    weakened = TEST_APP.replace("    assert f() == 1\n", "    f()\n")
    text = make_patch(env, writes({"tests/test_app.py": weakened}))
    failed = assert_failed_at(gate(env, text), "test_tampering")
    assert failed.evidence == ["tests/test_app.py: removes 1 assert line(s) and adds none"]


def test_a_tests_phase_may_delete_tests(env: Env) -> None:
    report = gate(env, make_patch(env, _delete_test), make_phase(task_category="tests"))
    assert report.verdict == "pass", report.model_dump_json(indent=2)
    assert not (env.wt / "tests/test_app.py").exists()


# --------------------------------------------------------------------------- apply


def test_a_patch_that_does_not_apply_fails_with_gits_message(env: Env) -> None:
    text = make_patch(env, writes({"src/lines.txt": LINES.replace("line 5\n", "line five\n")}))
    write(env.wt, "src/lines.txt", LINES.replace("line 5\n", "line 5 (edited)\n"))
    git(env.wt, "commit", "-qam", "conflicting edit")
    report = gate(env, text)
    failed = assert_failed_at(report, "apply")
    assert not failed.policy
    (message,) = failed.evidence
    assert "src/lines.txt" in message
    assert report.touched_paths == ["src/lines.txt"]
    assert "`apply`" in feedback_for(report)


# --------------------------------------------------------------------------- static checks


def test_a_failing_static_check_fails_the_gate(env: Env) -> None:
    text = make_patch(env, writes({"src/app.py": "x = 1\n"}))
    static = [
        CiStep(name="lint", run="echo checking; echo 'src/app.py:1: bad style'; sh -c 'exit 3'"),
        CiStep(name="types", run="true"),
    ]
    report = gate(env, text, static=static)
    failed = assert_failed_at(report, "static_checks")
    assert not failed.policy
    assert failed.message == "static check(s) failed: lint"
    assert failed.evidence[:2] == [
        "lint: command: echo checking; echo 'src/app.py:1: bad style'; sh -c 'exit 3'",
        "lint: rc 3",
    ]
    assert "src/app.py:1: bad style" in failed.evidence[2]
    logs = env.tmp / "gate-logs"
    assert "bad style" in (logs / "static-lint.log").read_text()
    assert (logs / "static-types.log").is_file()  # every check runs: all problems at once
    # The gate leaves the applied patch for the caller to reset.
    assert (env.wt / "src/app.py").read_text() == "x = 1\n"


def test_a_static_check_that_times_out_fails(env: Env) -> None:
    text = make_patch(env, writes({"src/app.py": "x = 1\n"}))
    static = [CiStep(name="slow", run="echo started; sleep 30", timeout_s=1)]
    failed = assert_failed_at(gate(env, text, static=static), "static_checks")
    assert "slow: timed out after 1 s and was killed" in failed.evidence
    assert "started" in failed.evidence[2]


def test_the_log_tail_is_twenty_lines(env: Env) -> None:
    text = make_patch(env, writes({"src/app.py": "x = 1\n"}))
    static = [CiStep(name="noisy", run="seq 1 50; exit 1")]
    failed = assert_failed_at(gate(env, text, static=static), "static_checks")
    tail = failed.evidence[2].split("\n", 1)[1].splitlines()
    assert tail == [str(n) for n in range(31, 51)]


# --------------------------------------------------------------------------- feedback


def test_feedback_names_the_check_its_message_and_evidence(env: Env) -> None:
    text = make_patch(env, writes({"README.md": "changed\n"}))
    report = gate(env, text, make_phase(scope_allow=["src/**"]))
    feedback = feedback_for(report)
    assert feedback.startswith("The gate refused attempt 2 at check `scope`:")
    assert check(report, "scope").message in feedback
    assert "- README.md (not allowed)" in feedback
    assert "scope" in feedback.splitlines()[-1]
