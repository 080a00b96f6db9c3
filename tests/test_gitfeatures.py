"""Submodules and `.gitattributes` filters: refused unless the phase declares them (plan
`allows:`), and even then no `.gitmodules` URL that runs a command or reads a local path."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.gate.patch import parse_patch
from pipeline.gate.paths import check_paths_safe
from pipeline.plan.markdown import parse_markdown, render_markdown
from pipeline.run.driver import run_to_end
from testing.gitrepo import git
from testing.runs import make_workspace, phase


def _modules(*lines: str) -> str:
    body = "".join(f"+{line}\n" for line in lines)
    return (
        "diff --git a/.gitmodules b/.gitmodules\nnew file mode 100644\n--- /dev/null\n+++ b/.gitmodules\n"
        f"@@ -0,0 +1,{len(lines)} @@\n{body}"
    )


def _attributes(*lines: str) -> str:
    body = "".join(f"+{line}\n" for line in lines)
    return (
        "diff --git a/pkg/.gitattributes b/pkg/.gitattributes\nnew file mode 100644\n--- /dev/null\n"
        f"+++ b/pkg/.gitattributes\n@@ -0,0 +1,{len(lines)} @@\n{body}"
    )


GOOD_URLS = ["https://github.com/o/lib.git", "ssh://git@example.com/o/lib.git", "git@github.com:o/lib.git",
             "git://example.com/lib.git"]
BAD_URLS = ["ext::sh -c touch% /tmp/pwned", "fd::3", "file:///etc/lib.git", "file::/srv/lib", "/srv/lib.git",
            "../lib.git", "./lib", "~/lib.git", "ssh://-oProxyCommand=touch%20x/lib", "-u/evil:x",
            "transport::https://example.com/x"]


@pytest.mark.parametrize("url", GOOD_URLS)
def test_a_declared_submodule_with_a_network_url_passes(tmp_path: Path, url: str) -> None:
    patch = parse_patch(_modules('[submodule "lib"]', "\tpath = lib", f"\turl = {url}"))
    assert check_paths_safe(patch, tmp_path, ["submodules"]).verdict == "pass"
    refused = check_paths_safe(patch, tmp_path)
    assert refused.verdict == "fail" and "allows: [submodules]" in refused.evidence[0]


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_declared_submodule_with_a_command_or_local_url_is_refused(tmp_path: Path, url: str) -> None:
    patch = parse_patch(_modules('[submodule "lib"]', "\tpath = lib", f"\turl = {url}"))
    result = check_paths_safe(patch, tmp_path, ["submodules"])
    assert result.verdict == "fail" and result.policy
    assert result.evidence == [f".gitmodules:3: URL {url!r}" + result.evidence[0].split(repr(url), 1)[1]]
    assert "https://" in result.evidence[0]


@pytest.mark.parametrize(
    ("line", "why"),
    [("\tupdate = !sh -c evil", "runs a command"), ("\turl = https://x/\\", "trailing backslash"),
     ('[submodule "../../x"]', "`..`"), ("\tpath = ../outside", "`..`")],
)
def test_other_hostile_gitmodules_lines_are_refused(tmp_path: Path, line: str, why: str) -> None:
    result = check_paths_safe(parse_patch(_modules(line)), tmp_path, ["submodules"])
    assert result.verdict == "fail" and why in result.evidence[0] and result.evidence[0].startswith(".gitmodules:1:")


def test_a_filter_attribute_is_refused_naming_file_and_line_unless_declared(tmp_path: Path) -> None:
    patch = parse_patch(_attributes("*.txt text", "# filter=lfs in a comment", "*.py filter=evil diff=python",
                                    "[attr]m filter=x", "*.md merge=union diff=markdown"))
    result = check_paths_safe(patch, tmp_path)
    assert result.verdict == "fail" and result.policy
    assert [e.split(":", 2)[:2] for e in result.evidence] == [["pkg/.gitattributes", "3"], ["pkg/.gitattributes", "4"]]
    assert "allows: [filters]" in result.evidence[0]
    assert check_paths_safe(patch, tmp_path, ["filters"]).verdict == "pass"


def test_allows_in_a_markdown_plan_round_trips_and_a_bad_name_is_named() -> None:
    text = "project_id: p\n\n## Core\n\n### Vendor lib\ncategory: feature_implementation\nallows: submodules, filters\n"
    plan = parse_markdown(text, source="plan.md", run_id="r1")
    assert plan["tiers"][0]["phases"][0]["allows"] == ["submodules", "filters"]
    assert parse_markdown(render_markdown(plan), source="plan.md", run_id="r1") == plan
    with pytest.raises(Exception) as err:
        parse_markdown(text.replace("filters", "hooks"), source="plan.md", run_id="r1")
    assert "plan.md:7" in str(err.value) and "hooks" in str(err.value)


# -- through a whole run ------------------------------------------------------------------

SHA = "1234567890123456789012345678901234567890"


def _submodule_run(tmp_path: Path, url: str, allows: list[str]):  # type: ignore[no-untyped-def]
    body = (
        "Path('vendor/lib').mkdir(parents=True)\n"
        f"git('update-index', '--add', '--cacheinfo', '160000,{SHA},vendor/lib')\n"
        f"write('.gitmodules', '[submodule \"lib\"]\\n\\tpath = vendor/lib\\n\\turl = {url}\\n')\n"
        'write("mod.py", "X = 2\\n")\n'
    )
    setup = make_workspace(tmp_path, files={"mod.py": "X = 1\n"}, agent_body=body,
                           phases=[phase("P1", allows=allows, max_builder_attempts=1)])
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    return setup


def test_a_declared_submodule_with_an_https_url_reaches_the_branch_as_a_gitlink(
    tmp_path: Path, unsandboxed: None
) -> None:
    setup = _submodule_run(tmp_path, "https://example.com/lib.git", ["submodules"])
    assert setup.run_json()["state"] == "DONE_SUCCESS", setup.run_json().get("failure_reason")
    assert git(setup.repo, "ls-tree", setup.branch, "vendor/lib") == f"160000 commit {SHA}\tvendor/lib"
    assert "https://example.com/lib.git" in git(setup.repo, "show", f"{setup.branch}:.gitmodules")


@pytest.mark.parametrize(
    ("url", "allows"), [("https://example.com/lib.git", []), ("ext::sh -c touch% PWNED", ["submodules"])]
)
def test_an_undeclared_or_ext_submodule_never_reaches_the_branch(tmp_path: Path, unsandboxed: None, url: str,
                                                                allows: list[str]) -> None:
    setup = _submodule_run(tmp_path, url, allows)
    run = setup.run_json()
    assert run["state"] == "DONE_FAILED_POLICY_VIOLATION", run.get("failure_reason")
    gate = setup.gate_json("P1")
    failed = next(c for c in gate["checks"] if c["verdict"] == "fail")
    assert failed["name"] == "paths_safe"
    assert any(e.startswith(("vendor/lib", ".gitmodules")) for e in failed["evidence"]), failed["evidence"]
    assert "vendor/lib" not in git(setup.repo, "ls-tree", "-r", "--name-only", setup.branch).split()
    assert not any(tmp_path.rglob("PWNED"))
