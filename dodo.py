"""doit entry point: the tasks live in the installed `pipeline` package."""

from pipeline.tasks import *  # noqa: F403
from pipeline.tasks import DOIT_CONFIG  # noqa: F401
