"""The run inspector: runs/<run>/inspect.html from a real demo run, from damaged run
directories, with secrets and hostile markup in what agents wrote, killed mid-step, and
loaded in a real headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.commands.demo import run_demo
from pipeline.reporting.inspect.page import PAGE, render_page, write_inspect
from pipeline.reporting.inspect.read import make_masker, read_run
from testing.gitrepo import IDENTITY

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SECRET_VALUE = "hunter2-very-secret-value"
GITHUB_TOKEN_SHAPE = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The real demo, run once for the module (the suite's git isolation, set by hand)."""
    root = tmp_path_factory.mktemp("inspect")
    cfg = root / "gitconfig"
    cfg.write_text("[init]\n\tdefaultBranch = main\n")
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("GIT_")]:
            mp.delenv(name)
        mp.setenv("GIT_CONFIG_GLOBAL", str(cfg))
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        for k, v in IDENTITY.items():
            mp.setenv(k, v)
        result = run_demo(root=root / "demo", quiet=True)
    yield result.workspace / "runs" / "demo"


@pytest.fixture
def run_copy(demo_run: Path, tmp_path: Path) -> Path:
    """A copy of the demo's workspace for a test to damage; its run directory."""
    workspace = tmp_path / "workspace"
    shutil.copytree(demo_run.parent.parent, workspace, ignore=shutil.ignore_patterns(".autopack"))
    return workspace / "runs" / "demo"


def cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _text(html: str) -> str:
    """The page's visible text, roughly: tags dropped, entities kept."""
    return re.sub(r"<[^>]+>", "", html)


# -- the demo's page ------------------------------------------------------------------------


def test_the_demo_run_writes_its_page_at_the_terminal_state(demo_run: Path) -> None:
    page = (demo_run / PAGE).read_text()
    text = _text(page)
    # the verdict first
    verdict = text.index("DONE_FAILED_POLICY_VIOLATION")
    assert verdict < text.index("Timeline") < text.index("Phases")
    assert "not eligible" in text and "verifies" in text and "does not verify" not in text
    # P2.2: the failed phase, its gate evidence and the incident
    p22 = page.split('id="phase-P2.2"')[1]
    assert "docs/notes.md (not allowed)" in p22 and "outside the scope" in p22
    assert "Incident" in text and 'href="incident/last-patch.diff"' in page
    # P1.2: two attempts, the first folded, with the CI failure that fed the second
    p12 = page.split('id="phase-P1.2"')[1].split('id="phase-P2.1"')[0]
    assert p12.count('<details class="attempt">') == 1 and p12.count('<details open class="attempt">') == 1
    assert "(superseded)" in p12 and "ci_failed" in p12
    assert "tests/test_normalize.py::test_strip_punctuation_keeps_digits" in p12
    assert "Fed back from attempt 1:" in p12 and "The feedback it got" in p12
    fed = p12.split("Fed back from attempt 1:")[1].split("</p>")[0]
    assert "failing: <code>tests/test_normalize.py::test_strip_punctuation_keeps_digits</code>" in fed
    assert 'href="phases/02-P1.2/ci/1/ci.json"' in p12 and 'href="phases/02-P1.2/ci/1/try3-tests.log"' in p12
    # spend against every budget, issues at every level, links to the files
    assert "13,390 of 5,000,000" in text and "T1 CI runs" in text and "P1.2 builder attempts" in text
    assert "normalize-unicode-punctuation" in text and "gate:scope" in text
    assert 'href="phases/02-P1.2/attempts/1/patch.diff"' in page
    # self-contained and offline
    assert not re.search(r"(?:src|href)\s*=\s*\"?(?:https?:)?//", page)
    assert "<script" not in page and "default-src 'none'" in page
    assert len(page.encode()) < 2_000_000


def test_the_summary_links_the_page_and_a_rerender_changes_no_byte(run_copy: Path) -> None:
    assert "[inspect.html](inspect.html)" in (run_copy / "RUN_SUMMARY.md").read_text()
    before = (run_copy / PAGE).read_bytes()
    done = cli(run_copy.parent.parent, "inspect", "--run", "demo")
    assert done.returncode == 0, done.stderr
    assert "wrote runs/demo/inspect.html" in done.stdout
    assert (run_copy / PAGE).read_bytes() == before


def test_inspect_task_rejects_an_unknown_or_missing_run(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    for args, expected in ((["--run", "nope"], "no run 'nope'"), ([], "missing --run")):
        done = cli(tmp_path, "inspect", *args)
        assert done.returncode == 2, done.stdout + done.stderr
        assert expected in done.stderr and "fix:" in done.stderr and "Traceback" not in done.stderr


def test_the_report_links_each_runs_page(run_copy: Path) -> None:
    from pipeline.reporting.report import build_report

    build_report(run_copy.parent.parent)
    reports = run_copy.parent.parent / "reports"
    assert '<a href="../runs/demo/inspect.html">demo</a>' in (reports / "index.html").read_text()
    assert "[demo](../runs/demo/inspect.html)" in (reports / "index.md").read_text()


def test_the_backlog_entries_of_the_run_are_shown_with_their_age(run_copy: Path) -> None:
    workspace = run_copy.parent.parent
    done = cli(workspace, "backlog")
    assert done.returncode == 0, done.stderr
    page = render_page(read_run(run_copy))
    backlog = page.split("<h3>Project backlog")[1]
    assert 'href="../../reports/project_issue_backlog.json"' in backlog
    # One run in the workspace: every open key of the backlog is this run's (an issue the
    # run fixed on a later attempt is resolved and is not in the backlog).
    keys = json.loads((workspace / "reports" / "project_issue_backlog.json").read_text())["issues_by_key"]
    assert len(keys) >= 2
    assert f"{len(keys)} of the backlog's {len(keys)} issue key(s) concern this run" in backlog
    assert "gate:scope" in backlog


def test_a_run_in_progress_renders(tmp_path: Path) -> None:
    from pipeline.commands.demo import prepare
    from pipeline.run.start import start_run

    _sample, workspace = prepare(tmp_path)
    start_run(workspace, "demo")
    assert cli(workspace, "run_phase", "--run", "demo").returncode == 0
    done = cli(workspace, "inspect", "--run", "demo")
    assert done.returncode == 0, done.stderr
    page = (workspace / "runs" / "demo" / PAGE).read_text()
    assert "PHASE_QUEUEING" in page and 'class="verdict warn"' in page and "Incident" not in page
    assert 'id="phase-P1.1"' in page and "COMPLETE" in page


# -- damaged run directories ---------------------------------------------------------------


def _scrambled(value: object) -> object:
    """Every value replaced by one of another type."""
    if isinstance(value, dict):
        return {k: _scrambled(v) for k, v in value.items()}
    if isinstance(value, list):
        return {"not": "a list"}
    if isinstance(value, str):
        return 12345
    if isinstance(value, bool | int | float) or value is None:
        return ["not", "a", "number"]
    return value


DAMAGED = [
    "run.json",
    "strategy.json",
    "run_issue_index.json",
    "incident/incident.json",
    "phases/02-P1.2/phase.json",
    "phases/02-P1.2/attempts/1/builder.json",
    "phases/02-P1.2/attempts/1/gate.json",
    "phases/02-P1.2/ci/1/ci.json",
    "phases/04-P2.2/issues.json",
]


@pytest.mark.parametrize("rel", DAMAGED)
def test_a_malformed_artifact_is_named_and_the_rest_is_shown(run_copy: Path, rel: str) -> None:
    path = run_copy / rel
    original = json.loads(path.read_text())
    for damage in ("{not json", "[1, 2]", json.dumps(_scrambled(original))):
        path.write_text(damage)
        page = render_page(read_run(run_copy))
        assert 'id="phase-P2.1"' in page  # the rest is there
        if not damage.startswith('{"'):
            assert f"{rel}: " in page and "Missing or unreadable" in page


@pytest.mark.parametrize(
    "rel",
    [
        "run.json",
        "strategy.json",
        "events.jsonl",
        "incident",
        "phases/02-P1.2/phase.json",
        "phases/02-P1.2/attempts/2",
        "phases/02-P1.2/attempts/1/patch.diff",
        "phases/02-P1.2/ci",
        "phases",
    ],
)
def test_a_missing_artifact_is_named_and_the_rest_is_shown(run_copy: Path, rel: str) -> None:
    path = run_copy / rel
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    page = render_page(read_run(run_copy))
    assert "<h1>Run demo</h1>" in page
    if rel.endswith((".json", ".jsonl")):
        assert f"{rel}: missing" in page
    if rel == "events.jsonl":
        assert "does not verify" in page and "No timeline" in page
    if rel == "phases":
        assert "No phase directories" in page


def test_a_missing_attempt_gate_falls_back_to_the_phases_latest(run_copy: Path) -> None:
    (run_copy / "phases/04-P2.2/attempts/1/gate.json").unlink()
    page = render_page(read_run(run_copy))
    p22 = page.split('id="phase-P2.2"')[1]
    assert "docs/notes.md (not allowed)" in p22 and 'href="phases/04-P2.2/gate.json"' in p22


def test_an_empty_run_directory_still_renders(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    path = write_inspect(run_dir)
    page = path.read_text()
    assert "run.json: missing" in page and "events.jsonl: missing" in page and "<h1>Run r1</h1>" in page


def test_an_edited_event_log_does_not_verify(run_copy: Path) -> None:
    events = run_copy / "events.jsonl"
    lines = events.read_text().splitlines()
    assert '"to_state":"EXECUTING"' in lines[4]
    lines[4] = lines[4].replace('"to_state":"EXECUTING"', '"to_state":"COMPLETE"')
    events.write_text("\n".join(lines) + "\n")
    page = render_page(read_run(run_copy))
    assert "does not verify" in page and "events.jsonl:5: line was edited" in page
    events.write_text("\n".join([*lines, "garbage"]) + "\n")
    page = render_page(read_run(run_copy))
    assert "does not verify" in page and "1 line(s) are not JSON objects" in page


# -- hostile content -----------------------------------------------------------------------


def _poison(run_dir: Path) -> None:
    """Secrets and markup where agents and patches put text."""
    hostile = f'<script>alert(1)</script><img src="http://example.invalid/x.png"> {SECRET_VALUE} {GITHUB_TOKEN_SHAPE}'
    builder = run_dir / "phases/02-P1.2/attempts/1/builder.json"
    record = json.loads(builder.read_text())
    record["result_notes"] = hostile
    builder.write_text(json.dumps(record))
    patch = run_dir / "phases/02-P1.2/attempts/1/patch.diff"
    patch.write_text(patch.read_text() + f"+token = '{GITHUB_TOKEN_SHAPE}'\n+# </pre><iframe src=//example.invalid>\n")
    gate = run_dir / "phases/04-P2.2/attempts/1/gate.json"
    report = json.loads(gate.read_text())
    report["checks"][3]["evidence"] = ['"><svg onload=alert(1)> (not allowed)']
    gate.write_text(json.dumps(report))
    log = run_dir / "phases/02-P1.2/ci/1/try3-tests.log"
    log.write_text(log.read_text() + f"\nleaked {SECRET_VALUE}\n<style>body{{display:none}}</style>\n")


def test_secrets_are_masked_and_markup_is_escaped(run_copy: Path) -> None:
    _poison(run_copy)
    mask = make_masker({"DEPLOY_TOKEN": SECRET_VALUE})
    page = render_page(read_run(run_copy, mask))
    assert SECRET_VALUE not in page and GITHUB_TOKEN_SHAPE not in page and "***" in page
    assert "<script" not in page and "<img" not in page and "<iframe" not in page and "<svg onload" not in page
    assert "<style>body" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;iframe" in page
    assert "&quot;&gt;&lt;svg onload=alert(1)&gt;" in page


def test_a_cut_log_shows_no_part_of_a_cut_secret(run_copy: Path) -> None:
    """The tail of a log is whole lines: the end of a token cut in two is not shown."""
    log = run_copy / "phases/02-P1.2/ci/1/try3-tests.log"
    log.write_text("x" * 100 + GITHUB_TOKEN_SHAPE + "B" * 3990)  # one line, longer than the tail shown
    page = render_page(read_run(run_copy))
    assert GITHUB_TOKEN_SHAPE[-10:] not in page and "B" * 100 not in page
    assert 'whole file: <a href="phases/02-P1.2/ci/1/try3-tests.log">' in page


def test_the_terminal_page_masks_the_supervisors_secrets(run_copy: Path) -> None:
    _poison(run_copy)
    done = cli(run_copy.parent.parent, "inspect", "--run", "demo", env={"DEPLOY_TOKEN": SECRET_VALUE})
    assert done.returncode == 0, done.stderr
    assert SECRET_VALUE not in (run_copy / PAGE).read_text()


def test_usage_sources_are_shown_when_recorded(run_copy: Path) -> None:
    builder = run_copy / "phases/02-P1.2/attempts/1/builder.json"
    record = json.loads(builder.read_text())
    record["usage"].update({"tokens_source": "estimated", "cost_source": "reported"})
    builder.write_text(json.dumps(record))
    run = json.loads((run_copy / "run.json").read_text())
    run["spend"]["reserved_tokens"] = 250000
    (run_copy / "run.json").write_text(json.dumps(run))
    page = render_page(read_run(run_copy))
    assert "3,050 tokens (2,400 in, 650 out) [estimated]" in page and "$0.0169 [reported]" in page
    assert "3,050 estimated" in page and "(+250,000 reserved)" in page and 'class="b-reserved"' in page


def test_auditor_calls_are_shown_with_their_verdicts(run_copy: Path) -> None:
    audit = run_copy / "phases/02-P1.2/audit/1"
    audit.mkdir(parents=True)
    record = {
        "k": 1,
        "purpose": "review",
        "profile": "codex",
        "command": "codex exec",
        "started_at": "2026-12-04T10:00:00Z",
        "finished_at": "2026-12-04T10:00:30Z",
        "verdict": "revise",
        "notes": "keep <b>digits</b>",
        "usage": {"tokens_in": 10, "tokens_out": 5, "cost_usd": 0.001, "turns": 1},
    }
    (audit / "auditor.json").write_text(json.dumps(record))
    page = render_page(read_run(run_copy))
    p12 = page.split('id="phase-P1.2"')[1].split('id="phase-P2.1"')[0]
    assert "<h4>Auditor</h4>" in p12 and ">revise<" in p12 and "keep &lt;b&gt;digits&lt;/b&gt;" in p12
    assert 'href="phases/02-P1.2/audit/1/auditor.json"' in p12
    assert 'class="tl-auditor"' in page


# -- killed while writing ------------------------------------------------------------------


def test_a_kill_before_the_write_leaves_the_old_page_and_a_rerun_rewrites_it(run_copy: Path) -> None:
    workspace = run_copy.parent.parent
    (run_copy / PAGE).write_text("old page")
    killed = cli(workspace, "inspect", "--run", "demo", env={"AUTOPACK_FAILPOINT": "inspect_before_write"})
    assert killed.returncode == 137
    assert (run_copy / PAGE).read_text() == "old page"
    assert not [p for p in run_copy.iterdir() if ".tmp." in p.name]
    done = cli(workspace, "inspect", "--run", "demo")
    assert done.returncode == 0, done.stderr
    assert "<h1>Run demo</h1>" in (run_copy / PAGE).read_text()


def test_a_run_killed_before_its_page_gets_it_on_the_next_step(tmp_path: Path) -> None:
    from pipeline.commands.demo import prepare
    from pipeline.run.start import start_run

    _sample, workspace = prepare(tmp_path)
    start_run(workspace, "demo")
    killed = cli(workspace, "run", "--run", "demo", env={"AUTOPACK_FAILPOINT": "inspect_before_write"})
    assert killed.returncode == 137, killed.stdout + killed.stderr
    run_dir = workspace / "runs" / "demo"
    assert json.loads((run_dir / "run.json").read_text())["state"] == "DONE_FAILED_POLICY_VIOLATION"
    assert not (run_dir / PAGE).exists()
    again = cli(workspace, "run", "--run", "demo")
    assert "is finished" in again.stdout, again.stdout + again.stderr
    assert "DONE_FAILED_POLICY_VIOLATION" in (run_dir / PAGE).read_text()


# -- in a real browser -----------------------------------------------------------------------

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # a request that slipped through could not leave the machine
]

PROBE = """<script>
window.__errors = [];
addEventListener('error', e => __errors.push('error: ' + (e.message || e.target.outerHTML)), true);
addEventListener('securitypolicyviolation', e => __errors.push('csp: ' + e.violatedDirective + ' ' + e.blockedURI));
addEventListener('load', () => {
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({
    errors: __errors,
    resources: performance.getEntriesByType('resource').map(r => r.name),
    attempts: document.querySelectorAll('details.attempt').length,
    bars: [...document.querySelectorAll('svg.bar')].filter(s => s.getBoundingClientRect().width > 0).length,
    timeline: Math.round((document.querySelector('svg.timeline') || {getBoundingClientRect: () => ({width: 0})})
      .getBoundingClientRect().width)});
  document.body.appendChild(out);
});
</script>"""


def _browser(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _probe(page: Path, work: Path) -> dict[str, object]:
    """Load a copy of `page` with a script that writes what happened into the DOM."""
    html = page.read_text()
    html = html.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
    html = html.replace("<head>\n", "<head>\n" + PROBE + "\n", 1)
    probe_page = page.with_name("probe.html")
    probe_page.write_text(html)
    done = _browser(probe_page, work / "chromium-probe", "--dump-dom")
    assert '<pre id="probe">' in done.stdout, done.stderr[-2000:]
    raw = done.stdout.split('<pre id="probe">')[1].split("</pre>")[0]
    probe: dict[str, object] = json.loads(raw.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">"))
    return probe


def _console(page: Path, work: Path) -> list[str]:
    """Console messages chromium logs while loading the page itself (no probe)."""
    done = _browser(page, work / "chromium-console", "--enable-logging=stderr", "--v=0", "--dump-dom")
    assert "<h1>Run" in done.stdout, done.stderr[-2000:]
    return [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_demo_page_loads_offline_in_a_headless_browser(run_copy: Path) -> None:
    page = run_copy / PAGE
    assert _console(page, run_copy.parent) == []
    probe = _probe(page, run_copy.parent)
    assert probe["errors"] == [] and probe["resources"] == [], probe
    assert probe["attempts"] == 5 and isinstance(probe["bars"], int) and probe["bars"] >= 20, probe
    assert isinstance(probe["timeline"], int) and probe["timeline"] > 600, probe
    # JavaScript off changes nothing: the page has no script (the probe's copy adds one)
    assert "<script" not in page.read_text()
    # the screenshot, kept beside the page in the test's run directory
    shot = run_copy / "inspect.png"
    _browser(
        page, run_copy.parent / "chromium-shot", "--hide-scrollbars", "--window-size=1200,4000", f"--screenshot={shot}"
    )
    assert shot.stat().st_size > 50_000, "a blank page compresses to a few KB"
    if os.environ.get("AUTOPACK_TEST_ARTIFACTS"):  # CI collects it from there
        keep = Path(os.environ["AUTOPACK_TEST_ARTIFACTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / "inspect-demo.png")
    print(f"screenshot: {shot}")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_hostile_content_makes_no_request_in_a_headless_browser(run_copy: Path) -> None:
    _poison(run_copy)
    page = write_inspect(run_copy, make_masker({"DEPLOY_TOKEN": SECRET_VALUE}))
    assert _console(page, run_copy.parent) == []
    probe = _probe(page, run_copy.parent)
    assert probe["errors"] == [] and probe["resources"] == [], probe


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_browser_check_sees_a_request_that_got_through(run_copy: Path) -> None:
    """The check is live: markup that escaped the escaping is reported, twice over."""
    page = run_copy / PAGE
    page.write_text(page.read_text().replace("<h1>", '<img src="http://example.invalid/x.png"><h1>', 1))
    assert any("example.invalid" in line for line in _console(page, run_copy.parent))
    probe = _probe(page, run_copy.parent)
    assert probe["resources"] == ["http://example.invalid/x.png"] and probe["errors"], probe


def test_unknown_usage_and_reserved_spend_are_shown(run_copy: Path) -> None:
    builder = run_copy / "phases/02-P1.2/attempts/1/builder.json"
    record = json.loads(builder.read_text())
    unknown = dict.fromkeys(("tokens_in", "tokens_out", "tokens_cached", "cost_usd"), "unknown")
    record["usage"].update({"tokens_in": None, "tokens_out": None, "cost_usd": None, "sources": unknown})
    builder.write_text(json.dumps(record))
    run = json.loads((run_copy / "run.json").read_text())
    run["spend"].update({"tokens_reserved": 40000, "cost_reserved_usd": 0.5, "cost_estimated_usd": 0.0})
    run["spend"]["tokens"] += 40000
    run["spend"]["cost_usd"] += 0.5
    (run_copy / "run.json").write_text(json.dumps(run))
    page = render_page(read_run(run_copy))
    assert "[unknown]" in page and "(+40,000 reserved)" in page and "(+$0.5000 reserved)" in page
