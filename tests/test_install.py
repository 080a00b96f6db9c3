"""A wheel install works in a repository that has its own top-level `pipeline` package:
the scaffolded dodo.py and doit.cfg reach Autopack's tasks through `autopack_tasks`."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from testing.gitrepo import make_repo

ROOT = Path(__file__).resolve().parent.parent


def _run(argv: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh venv with Autopack installed from a wheel (no editable link to this checkout);
    its dependencies come from the test venv's site-packages, offline."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", ROOT],
                 cwd=tmp, env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp / "dist").glob("autopack-*.whl"))
    fresh = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(fresh)
    python = fresh / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    fresh_site = Path(_run([python, "-c", purelib], tmp, env).stdout.strip())
    # A plain path line adds the directory without running its .pth files, so the test
    # venv's editable link to this checkout stays out.
    (fresh_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel],
                     cwd=tmp, env=env)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return fresh / "bin", env


def test_doit_in_a_repo_with_its_own_pipeline_package(wheel_env: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    bin_dir, env = wheel_env
    repo = make_repo(tmp_path / "project", {"pipeline/__init__.py": "OWN = True\n", "pipeline/etl.py": "X = 1\n"})
    done = _run([bin_dir / "autopack", "init"], repo, env)
    assert done.returncode == 0, done.stderr
    listed = _run([bin_dir / "python", "-m", "doit", "list"], repo, env)
    assert listed.returncode == 0, listed.stderr
    assert "start_run" in listed.stdout and "validate" in listed.stdout
    created = _run([bin_dir / "python", "-m", "doit", "new_run", "--run", "r1"], repo, env)
    assert created.returncode == 0, created.stderr
    assert (repo / "runs" / "r1" / "plan.yaml").is_file()
    checked = _run([bin_dir / "python", "-m", "doit", "validate", "--run", "r1"], repo, env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # (`python -m doit` puts the project directory first on sys.path: the worst case.)
    # doit's own `run` command is replaced through doit.cfg even here.
    run = _run([bin_dir / "python", "-m", "doit", "run", "--run", "nope"], repo, env)
    assert run.returncode == 2 and "nope" in run.stderr
    # The project's own package is untouched and still its own.
    assert (repo / "pipeline" / "__init__.py").read_text() == "OWN = True\n"


def test_the_installed_package_is_the_wheel(wheel_env: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    bin_dir, env = wheel_env
    where = _run([bin_dir / "python", "-c", "import autopack_tasks, pipeline; print(pipeline.__file__)"], tmp_path, env)
    assert where.returncode == 0, where.stderr
    assert str(ROOT) not in where.stdout and "site-packages" in where.stdout
