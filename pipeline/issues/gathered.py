"""Many small JSON files as one newline-delimited stream for DuckDB.

DuckDB's read_json over a glob costs ~90 µs a file on the 2-core machine (and lists a
deep glob slowly); Python lists and reads them at ~10 µs a file. `gather` writes every
file of `runs/<parts>` as one line, tagged with its own path as `filename` (the first
key), so SQL written for `read_json(glob, filename = true)` reads the stream unchanged
with `columns` + `'filename': 'VARCHAR'` (`with_filename`) and `GATHERED_OPTIONS`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.store.rollup import one_line, read_artifact

if TYPE_CHECKING:
    import duckdb

# The deep globs (100,000 issues.json and more ci.json at 10,000 runs) are gathered by
# Python into one newline-delimited file each, every document with its own path as
# `filename`: DuckDB reads many small files at ~90 µs each, a plain read costs ~10 µs.
GATHERED_OPTIONS = "format = 'newline_delimited', hive_partitioning = false, maximum_object_size = 67108864"


def with_filename(columns: str) -> str:
    return columns[:-1] + ", 'filename': 'VARCHAR'}"


def _files(root: str, parts: tuple[str, ...]) -> list[str]:
    """The files under `root` matching `parts` (`*`: any directory), sorted as a glob."""
    paths = [root]
    for part in parts:
        if part != "*":
            paths = [f"{p}/{part}" for p in paths]
            continue
        found = []
        for p in paths:
            try:
                with os.scandir(p) as entries:
                    found += sorted(e.path for e in entries if e.is_dir())
            except (FileNotFoundError, NotADirectoryError):
                continue
        paths = found
    return paths


def gather(workspace: Path, parts: tuple[str, ...], into: Path) -> tuple[Path, list[str]] | None:
    """One newline-delimited file of every `runs/<parts>` file; None when there is none."""
    paths = _files(str(Path(workspace).resolve() / "runs"), parts)
    out, kept = into / f"{'-'.join(p for p in parts if p != '*')}.ndjson", []
    with open(out, "wb") as f:
        for path in paths:
            data = read_artifact(path)
            if data is not None:
                f.write(one_line(data, path) + b"\n")
                kept.append(path)
    return (out, kept) if kept else None


def _broken(paths: list[str]) -> str:
    """The first file that is not one JSON object (looked for only after a read failed)."""
    for path in paths:
        data = read_artifact(path)
        try:
            if data is not None and not isinstance(json.loads(data), dict):
                return path
        except ValueError:
            return path
    return ""


def read_gathered(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any], gathered: tuple[Path, list[str]]
) -> duckdb.DuckDBPyConnection:
    import duckdb

    try:
        return con.execute(sql, params)
    except duckdb.Error as exc:
        bad = _broken(gathered[1])
        what = f"{bad}: not a JSON object" if bad else f"one of {len(gathered[1])} files like {gathered[1][0]}"
        raise duckdb.InvalidInputException(f"{what} ({str(exc).splitlines()[0]})") from exc
