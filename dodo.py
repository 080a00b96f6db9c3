"""doit entry point: the tasks live in the `pipeline` package (loaded through autopack_tasks)."""

from autopack_tasks import *  # noqa: F403
from autopack_tasks import DOIT_CONFIG  # noqa: F401
