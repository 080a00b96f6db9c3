"""The demo's scripted builder: behaves like a coding agent on the `textstats` sample.

`doit demo` runs it as the builder of every phase of `plan.yaml`. It reads the variables
the supervisor sets (AUTOPACK_PHASE_ID, AUTOPACK_ATTEMPT, AUTOPACK_FEEDBACK,
AUTOPACK_RESULT), edits files in its current directory (the run's worktree) and writes a
JSON result with status, usage and suggested issues, as a real agent would.

What each phase does (a script, so the demo shows every path of the supervisor):

- P1.1 adds `sentence_count` and a test. Passes.
- P1.2 adds `title_case`; attempt 1 also breaks `strip_punctuation` (it drops digits), so an
  existing test fails and CI feeds the failure back; attempt 2 and later print that
  feedback and do it right. Suggests one minor issue on every attempt.
- P2.1 adds `textstats/cli.py` with `main(argv)` and a test. Passes.
- P2.2 adds `most_common_words`, but also writes `docs/notes.md`, outside the phase's
  scope: the gate must refuse the patch (a policy violation), on every attempt.

Every edit is "make this definition read exactly so", so running the agent twice in the
same attempt leaves the same files. Only the Python 3.11 standard library is used: the
agent runs with whatever interpreter the demo found.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

COUNTING = Path("textstats/counting.py")
NORMALIZE = Path("textstats/normalize.py")
CLI = Path("textstats/cli.py")
TEST_COUNTING = Path("tests/test_counting.py")
TEST_NORMALIZE = Path("tests/test_normalize.py")
TEST_CLI = Path("tests/test_cli.py")
OUT_OF_SCOPE_NOTE = Path("docs/notes.md")

# Prices of a made-up model, so that the demo's cost figures are plausible and repeatable.
_USD_PER_TOKEN_IN = 3e-6
_USD_PER_TOKEN_OUT = 15e-6


@dataclass
class Outcome:
    """What the agent reports about its work in the result file."""

    notes: str
    tokens_in: int
    tokens_out: int
    turns: int
    status: str = "success"
    suggested_issues: list[dict[str, str]] = field(default_factory=list)

    def as_result(self) -> dict[str, object]:
        cost = round(self.tokens_in * _USD_PER_TOKEN_IN + self.tokens_out * _USD_PER_TOKEN_OUT, 6)
        return {
            "status": self.status,
            "notes": self.notes,
            "suggested_issues": self.suggested_issues,
            "usage": {
                "tokens_in": self.tokens_in,
                "tokens_out": self.tokens_out,
                "cost_usd": cost,
                "turns": self.turns,
            },
        }


# --- editing helpers ----------------------------------------------------------------------

def write_if_changed(path: Path, text: str) -> None:
    """Write `text` to `path` unless it already holds it (a rerun touches nothing)."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        print(f"  {path}: already up to date")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"  {path}: written")


def _starts_top_level(line: str) -> bool:
    """A line that begins a new top-level statement (a closing bracket continues one)."""
    return bool(line.strip()) and not line[0].isspace() and not line.startswith((")", "]", "}"))


def set_function(source: str, name: str, code: str) -> str:
    """`source` with the top-level `def name(...)` replaced by `code`, or `code` appended."""
    lines = source.splitlines(keepends=True)
    block = code.strip("\n") + "\n"
    start = next((i for i, line in enumerate(lines) if line.startswith(f"def {name}(")), None)
    if start is None:
        return source.rstrip("\n") + "\n\n\n" + block
    end = start + 1
    while end < len(lines) and not _starts_top_level(lines[end]):
        end += 1
    # The blank lines before the next statement belong to the layout, not to this def.
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    return "".join(lines[:start]) + block + "".join(lines[end:])


def add_import(source: str, module: str, name: str) -> str:
    """`source` whose `from module import ...` line also imports `name` (names kept sorted)."""
    prefix = f"from {module} import "
    lines = source.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(prefix) and "(" not in line:
            names = {n.strip() for n in line[len(prefix):].split(",") if n.strip()}
            lines[i] = prefix + ", ".join(sorted(names | {name})) + "\n"
            return "".join(lines)
    return f"{prefix}{name}\n" + source


def edit(path: Path, change: Callable[[str], str]) -> None:
    """Apply `change` to the text of `path` (which must exist: it is part of the sample)."""
    write_if_changed(path, change(path.read_text(encoding="utf-8")))


def define(path: Path, name: str, code: str, *, imports: tuple[str, str] | None = None) -> None:
    """Make `def name` in `path` read `code`, importing `imports` = (module, name) first."""
    def change(source: str) -> str:
        if imports is not None:
            source = add_import(source, *imports)
        return set_function(source, name, code)

    edit(path, change)


# --- the code the agent "writes" ----------------------------------------------------------

SENTENCE_COUNT = '''
def sentence_count(text: str) -> int:
    """Number of sentences: runs of text ended by '.', '!' or '?' (a trailing fragment counts)."""
    count = 0
    in_sentence = False
    for ch in text:
        if ch in ".!?":
            if in_sentence:
                count += 1
            in_sentence = False
        elif not ch.isspace():
            in_sentence = True
    return count + 1 if in_sentence else count
'''

TEST_SENTENCE_COUNT = '''
def test_sentence_count() -> None:
    assert sentence_count("Hi. How are you? Fine!") == 3
    assert sentence_count("Wait... what") == 2
    assert sentence_count("") == 0
'''

TITLE_CASE = '''
def title_case(text: str) -> str:
    """Each word capitalised, the rest of it lower case; whitespace collapsed."""
    return " ".join(word[:1].upper() + word[1:].lower() for word in text.split())
'''

TEST_TITLE_CASE = '''
def test_title_case() -> None:
    assert title_case("hello  wORLD") == "Hello World"
    assert title_case("") == ""
'''

STRIP_PUNCTUATION_OK = '''
def strip_punctuation(text: str) -> str:
    """`text` without ASCII punctuation; letters, digits and whitespace are kept."""
    return "".join(ch for ch in text if ch not in string.punctuation)
'''

# Attempt 1 of P1.2 "tidies" this function and loses the digits, so the sample's
# test_strip_punctuation_keeps_digits fails: the failure the demo wants CI to catch.
STRIP_PUNCTUATION_BROKEN = '''
def strip_punctuation(text: str) -> str:
    """`text` without punctuation or symbols."""
    return "".join(ch for ch in text if ch not in string.punctuation and not ch.isdigit())
'''

MOST_COMMON_WORDS = '''
def most_common_words(text: str, n: int = 3) -> list[tuple[str, int]]:
    """The `n` most frequent words (case-insensitive), most frequent first, ties alphabetical."""
    counts: dict[str, int] = {}
    for word in text.lower().split():
        counts[word] = counts.get(word, 0) + 1
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]
'''

TEST_MOST_COMMON_WORDS = '''
def test_most_common_words() -> None:
    assert most_common_words("b a B c a b", 2) == [("b", 3), ("a", 2)]
    assert most_common_words("") == []
'''

NOTES_MD = """# Notes

`most_common_words` lower-cases words before counting; punctuation is not stripped, so
"word," and "word" count apart. Call `strip_punctuation` first if that matters.
"""

CLI_PY = '''"""Command line: `python -m textstats.cli WORDS...` prints word and character counts."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from textstats.counting import char_count, word_count


def main(argv: Sequence[str] | None = None) -> int:
    """Print the counts of `argv` joined by spaces (of stdin when no words are given)."""
    args = list(sys.argv[1:] if argv is None else argv)
    text = " ".join(args) if args else sys.stdin.read()
    print(f"words: {word_count(text)}")
    print(f"chars: {char_count(text)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
'''

TEST_CLI_PY = '''import pytest

from textstats.cli import main


def test_main_prints_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hello", "big", "world"]) == 0
    out = capsys.readouterr().out
    assert "words: 3" in out
    assert "chars: 15" in out
'''


# --- the phases ---------------------------------------------------------------------------

def phase_p1_1(attempt: int) -> Outcome:
    define(COUNTING, "sentence_count", SENTENCE_COUNT)
    define(TEST_COUNTING, "test_sentence_count", TEST_SENTENCE_COUNT,
           imports=("textstats.counting", "sentence_count"))
    return Outcome("added sentence_count with a test", 1200, 300, 1)


def phase_p1_2(attempt: int) -> Outcome:
    define(NORMALIZE, "title_case", TITLE_CASE)
    define(TEST_NORMALIZE, "test_title_case", TEST_TITLE_CASE,
           imports=("textstats.normalize", "title_case"))
    issue = {
        "issue_key": "normalize-unicode-punctuation",
        "severity": "minor",
        "message": "unicode punctuation is not handled",
    }
    if attempt == 1:
        define(NORMALIZE, "strip_punctuation", STRIP_PUNCTUATION_BROKEN)
        notes = "added title_case; also simplified strip_punctuation"
        return Outcome(notes, 2400, 650, 2, suggested_issues=[issue])
    define(NORMALIZE, "strip_punctuation", STRIP_PUNCTUATION_OK)
    notes = "added title_case; restored strip_punctuation, which must keep digits"
    return Outcome(notes, 1900, 420, 1, suggested_issues=[issue])


def phase_p2_2(attempt: int) -> Outcome:
    define(COUNTING, "most_common_words", MOST_COMMON_WORDS)
    define(TEST_COUNTING, "test_most_common_words", TEST_MOST_COMMON_WORDS,
           imports=("textstats.counting", "most_common_words"))
    # The overreach the gate exists for: a file the phase's scope does not allow.
    write_if_changed(OUT_OF_SCOPE_NOTE, NOTES_MD)
    return Outcome("added most_common_words with a test, and a usage note", 2100, 520, 2)


def phase_p2_1(attempt: int) -> Outcome:
    write_if_changed(CLI, CLI_PY)
    write_if_changed(TEST_CLI, TEST_CLI_PY)
    return Outcome("added textstats/cli.py with main(argv) and a test", 3000, 900, 3)


PHASES: dict[str, Callable[[int], Outcome]] = {
    "P1.1": phase_p1_1,
    "P1.2": phase_p1_2,
    "P2.1": phase_p2_1,
    "P2.2": phase_p2_2,
}


# --- driver -------------------------------------------------------------------------------

def feedback_text(value: str) -> str:
    """AUTOPACK_FEEDBACK as text: the supervisor may pass the text or a file holding it."""
    if value and "\n" not in value and len(value) < 4096:
        candidate = Path(value)
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8", errors="replace")
    return value


def write_result(outcome: Outcome) -> None:
    """Write the result JSON where the supervisor asked (atomically: it may be read at once)."""
    target = os.environ.get("AUTOPACK_RESULT")
    if not target:
        print("AUTOPACK_RESULT is not set; no result file written")
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps(outcome.as_result(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main() -> int:
    phase_id = os.environ.get("AUTOPACK_PHASE_ID", "")
    try:
        attempt = int(os.environ.get("AUTOPACK_ATTEMPT", "1"))
    except ValueError:
        attempt = 1
    print(f"demo agent: phase {phase_id or '?'}, attempt {attempt}, in {Path.cwd()}")
    feedback = feedback_text(os.environ.get("AUTOPACK_FEEDBACK", ""))
    if feedback.strip():
        print("feedback from the previous attempt:")
        print(feedback.rstrip("\n"))
    run_phase = PHASES.get(phase_id)
    if run_phase is None:
        known = ", ".join(PHASES)
        print(f"no script for phase {phase_id!r} (known: {known})", file=sys.stderr)
        write_result(Outcome(f"no script for phase {phase_id!r}", 100, 20, 1, status="failed"))
        return 2
    outcome = run_phase(attempt)
    write_result(outcome)
    print(f"done: {outcome.notes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
