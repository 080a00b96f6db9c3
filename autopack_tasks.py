"""Autopack's doit tasks, reachable from any repository: `from autopack_tasks import *` in dodo.py.

doit puts the dodo file's directory first on `sys.path`, so in a repository that has its
own top-level `pipeline` package (a common name), `import pipeline` would find that one
and not Autopack's. This module has a name no project uses; it loads Autopack's
`pipeline` package from where this file is installed, before anything else can, and every
later `pipeline.*` import resolves inside that package (a package finds its submodules
through its own `__path__`, not through `sys.path`).

Supported entry points: `doit <task>` with this dodo line (and `doit.cfg` naming
`autopack_tasks:RunCommand`), and the `autopack <task>` console script. `python -m
pipeline <task>` also works, except in a directory that has its own `pipeline` package.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _load_autopack_pipeline() -> None:
    home = Path(__file__).resolve().parent / "pipeline"
    loaded = sys.modules.get("pipeline")
    if loaded is not None:
        if Path(loaded.__file__ or "").resolve().parent == home:
            return
        raise ImportError(
            f"a package named 'pipeline' ({loaded.__file__}) was imported before Autopack's ({home}); "
            "import autopack_tasks first in dodo.py"
        )
    spec = importlib.util.spec_from_file_location(
        "pipeline", home / "__init__.py", submodule_search_locations=[str(home)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"Autopack's pipeline package is missing at {home}; reinstall autopack")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pipeline"] = module
    spec.loader.exec_module(module)


_load_autopack_pipeline()

from pipeline.commands.cli import RunCommand  # noqa: E402, F401
from pipeline.commands.tasks import *  # noqa: E402, F403
from pipeline.commands.tasks import DOIT_CONFIG  # noqa: E402, F401
