# Autopack in a container, for teams whose CI jobs run in containers (README.md, In CI).
#
#   docker build -t autopack .
#   docker run --rm -v "$PWD":/workspace autopack run_phase --run add-jitter
#
# The mounted directory is the workspace (and usually the target repository): runs work in
# linked git worktrees under its .autopack/, so git is part of the image. Agent CLIs are
# not: derive an image that installs the ones your plans use, e.g.
#
#   FROM autopack
#   RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm \
#       && npm install -g @anthropic-ai/claude-code && rm -rf /var/lib/apt/lists/*
#
# and pass only the variables their presets declare (`-e ANTHROPIC_API_KEY`). To keep the
# files written to the mount owned by you: `--user "$(id -u):$(id -g)" -e HOME=/tmp`.
FROM python:3.11-slim

# git: every run is a branch and a linked worktree of the mounted checkout.
# bubblewrap: the sandbox of agents and CI steps (docs/security.md); inside a container it
# needs user namespaces (e.g. `--security-opt seccomp=unconfined`), else runs record the
# isolation level `none` and rely on the supervisor's checks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git bubblewrap \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/autopack
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
RUN pip install .

# The mount belongs to the host's user, not the container's: let git work in it.
RUN git config --system --add safe.directory '*'

WORKDIR /workspace
ENTRYPOINT ["python", "-m", "pipeline"]
CMD ["status"]
