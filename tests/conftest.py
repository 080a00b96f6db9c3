"""Suite-wide isolation: no home git config, a fixed identity, no inherited GIT_* locations."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.gitrepo import IDENTITY


@pytest.fixture(autouse=True)
def _isolated_git(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    home = tmp_path_factory.mktemp("home")
    cfg = home / ".gitconfig"
    cfg.write_text("[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n")
    for name in [n for n in os.environ if n.startswith("GIT_")]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(cfg))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for k, v in IDENTITY.items():
        monkeypatch.setenv(k, v)
    yield


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp directory that is the current directory for the test."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def unsandboxed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Untrusted steps run without the bubblewrap sandbox (the fallback): for tests whose
    scripted agents report through files outside the worktree, which the sandbox forbids."""
    monkeypatch.setenv("AUTOPACK_SANDBOX", "off")
