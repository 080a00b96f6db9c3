"""Files an agent CLI writes for itself are dropped from a patch and named (pipeline.agents.owned)."""

from __future__ import annotations

from pipeline.agents.owned import drop_owned, owned

PATCH = """\
diff --git a/mod.py b/mod.py
index 1..2 100644
--- a/mod.py
+++ b/mod.py
@@ -1 +1 @@
-X = 1
+X = 2
diff --git a/.aider.tags.cache.v4/cache.db b/.aider.tags.cache.v4/cache.db
new file mode 100644
Binary files /dev/null and b/.aider.tags.cache.v4/cache.db differ
diff --git a/.gemini/settings.json b/.gemini/settings.json
new file mode 100644
--- /dev/null
+++ b/.gemini/settings.json
@@ -0,0 +1 @@
+{}
diff --git a/src/.aider.notes b/src/.aider.notes
new file mode 100644
--- /dev/null
+++ b/src/.aider.notes
@@ -0,0 +1 @@
+kept: not at the top of the tree
"""


def test_owned_sections_are_dropped_and_named() -> None:
    kept, dropped = drop_owned(PATCH, [".aider*", ".gemini/"])
    assert dropped == [".aider.tags.cache.v4/cache.db", ".gemini/settings.json"]
    assert "diff --git a/mod.py b/mod.py" in kept and "+X = 2" in kept
    assert ".gemini" not in kept and "cache.db" not in kept
    assert "src/.aider.notes" in kept


def test_no_patterns_or_no_patch_change_nothing() -> None:
    assert drop_owned(PATCH, []) == (PATCH, [])
    assert drop_owned("", [".aider*"]) == ("", [])


def test_a_rename_out_of_an_owned_directory_is_dropped_whole() -> None:
    rename = "diff --git a/.codex/x b/y\nsimilarity index 100%\nrename from .codex/x\nrename to y\n"
    assert drop_owned(rename, [".codex/"]) == ("", [".codex/x", "y"])


def test_owned_matches_the_top_of_the_tree() -> None:
    assert owned(".claude/settings.local.json", [".claude/"])
    assert owned(".opencode", [".opencode/"])
    assert not owned("docs/.claude/x", [".claude/"])
