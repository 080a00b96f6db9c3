"""Code, data, schemas, templates and docs cite only documents that are in the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = re.compile(r"DESIGN\.md|DESIGN §|\.\./shared\b|shared/background|playbook_v7")
DOC_PATH = re.compile(r"(?<![\w./-])((?:docs|schemas|bench)/[\w./-]+\.(?:md|json|py))")
MD_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True)
    files = [ROOT / line for line in out.stdout.splitlines()]
    return [f for f in files if f.is_file() and f.name != "CHANGELOG.md" and f.suffix not in {".png", ".whl"}]


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return ""


def test_nothing_cites_a_document_outside_the_repository() -> None:
    this = Path(__file__).resolve()
    offenders = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()[:100]}"
        for p in _tracked()
        if p != this
        for n, line in enumerate(_text(p).splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not offenders, "cite a file in this repository instead:\n" + "\n".join(offenders)


def test_every_cited_repository_file_exists() -> None:
    missing = []
    for p in _tracked():
        text = _text(p)
        rel = p.relative_to(ROOT).as_posix()
        # Tests and the demo's sample project name files of their own sample repositories.
        sample = rel.startswith(("tests/", "pipeline/data/demo/"))
        for ref in [] if sample else DOC_PATH.findall(text):
            if "repository's " + ref in text:
                continue  # a file of another project, named as such
            if not (ROOT / ref.rstrip(".")).exists():
                missing.append(f"{p.relative_to(ROOT)}: {ref}")
        if p.suffix == ".md":
            for link in MD_LINK.findall(text):
                if "://" in link or link.startswith("mailto:"):
                    continue
                if not (p.parent / link).exists():
                    missing.append(f"{p.relative_to(ROOT)}: link {link}")
    assert not missing, "these citations point at nothing:\n" + "\n".join(missing)
