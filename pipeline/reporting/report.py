"""`doit report`, `doit sql` and `doit metrics_diff`: DuckDB over the run tree.

The SQL lives in two places: views.sql (what every view means; shared with the DuckDB
CLI) and the report queries below, written against those views only, so a number on the
report can be re-derived with `doit sql`. The report is deterministic: it names the
newest run update it saw, not the time it was made, so an unchanged run tree gives an
unchanged page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from pipeline.core.jsonio import write_text_atomic
from pipeline.reporting.render import render_html, render_markdown
from pipeline.reporting.sections import Report, collect
from pipeline.store import rollup

if TYPE_CHECKING:
    pass


# Bump when the report's content or layout changes: an up-to-date report is rebuilt.
REPORT_FORMAT = "2"


INDEX_MD = rollup.REPORTS_DIR / "index.md"


INDEX_HTML = rollup.REPORTS_DIR / "index.html"












def fingerprint(workspace: Path, current: Mapping[str, str] | None = None) -> str:
    """What `doit report` compares to decide it is up to date (stat calls only)."""
    return rollup.fingerprint(workspace, extra=f"report {REPORT_FORMAT}", current=current)








@dataclass(frozen=True)
class Built:
    runs: int
    reread: int
    paths: tuple[Path, ...]


def build_report(workspace: Path, current: Mapping[str, str] | None = None) -> Built:
    """Refresh the rollup, query it, write reports/index.md and reports/index.html.

    `current`: the runs' stamps (`rollup.scan`) when the caller just took them."""
    workspace = Path(workspace)
    reports_dir = workspace / rollup.REPORTS_DIR
    # The views file for `duckdb -init reports/views.sql`, and the empty file it falls back to.
    write_text_atomic(reports_dir / "views.sql", rollup.views_sql())
    write_text_atomic(reports_dir / "none.json", "")
    refreshed = rollup.refresh(workspace, current)
    with rollup.connect(workspace, refresh_first=False, query="") as con:
        report = collect(con)
    _link_inspect_pages(workspace, report)
    md, html = workspace / INDEX_MD, workspace / INDEX_HTML
    write_text_atomic(md, render_markdown(report))
    write_text_atomic(html, render_html(report))
    return Built(report.runs, refreshed.reread, (md, html))


def _link_inspect_pages(workspace: Path, report: Report) -> None:
    """The run table's run ids link to each run's inspector page, where it was written."""
    section = next(s for s in report.sections if s.anchor == "runs")
    table = section.tables[-1]
    table.links[0] = [
        f"../runs/{quote(row[0])}/inspect.html" if (workspace / "runs" / row[0] / "inspect.html").is_file() else ""
        for row in table.rows
    ]
