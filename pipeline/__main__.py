"""`python -m pipeline <task> ...`: the same doit tasks, from any workspace."""

import sys

from pipeline.commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
