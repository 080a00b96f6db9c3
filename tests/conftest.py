"""Suite-wide isolation: no home git config, a fixed identity, no inherited GIT_* locations."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.core import sandbox
from testing.gitrepo import IDENTITY

_BWRAP_PROBLEM = sandbox.bwrap_problem()
_NEEDS_BWRAP = pytest.mark.skipif(_BWRAP_PROBLEM is not None, reason=f"no usable bubblewrap: {_BWRAP_PROBLEM}")


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


@pytest.fixture(params=[pytest.param("bwrap", marks=_NEEDS_BWRAP), "fallback"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test taking it runs twice: untrusted steps in bubblewrap (skipped, saying why,
    where it is unusable) and in the fallback without a sandbox."""
    if request.param == "fallback":
        monkeypatch.setenv(sandbox.SWITCH_ENV, "off")
    else:
        monkeypatch.delenv(sandbox.SWITCH_ENV, raising=False)
    return str(request.param)
