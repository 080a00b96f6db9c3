"""`doit init_ci --provider github|gitlab`: CI job templates that drive runs.

The templates (`pipeline/data/ci_templates/`) run one `doit run_phase` per job (README.md, In CI):
a job starts the run or checks out its integration branch `autonomous/<run>` and works
there in place (pipeline.run.context.run_worktree), pushes the branch with a lease on the sha
it started from, and queues the next job while the run is not terminal; a run ending
DONE_SUCCESS queues the start of its chained run (run.json `chain_next`), as `doit run`
does; a promotion job prints `doit promote --check`. Each template's header says how, and what to set up.

Like `init`, this never overwrites a file: an existing workflow is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pipeline.core.errors import InvalidInput
from pipeline.core.jsonio import write_text_atomic


@dataclass(frozen=True)
class Provider:
    """A CI system: its template and where it reads its configuration from."""

    name: str
    template: str  # under pipeline/data/ci_templates/
    default_path: str  # relative to the workspace


PROVIDERS: dict[str, Provider] = {
    "github": Provider("github", "github.yml", ".github/workflows/autopack.yml"),
    "gitlab": Provider("gitlab", "gitlab.yml", ".gitlab-ci.yml"),
}


def provider(name: str) -> Provider:
    known = ", ".join(PROVIDERS)
    if not name:
        raise InvalidInput("missing --provider", f"pass one of: {known} (e.g. `doit init_ci --provider github`)")
    found = PROVIDERS.get(name.strip().lower())
    if found is None:
        raise InvalidInput(f"unknown CI provider {name!r}", f"pass one of: {known}")
    return found


def template_text(name: str) -> str:
    """The text of provider `name`'s template, as shipped."""
    data = resources.files("pipeline") / "data" / "ci_templates" / provider(name).template
    return data.read_text(encoding="utf-8")


@dataclass(frozen=True)
class CiWritten:
    """What init_ci wrote."""

    provider: Provider
    path: Path

    def render(self, workspace: Path) -> str:
        shown = self.path.relative_to(workspace) if self.path.is_relative_to(workspace) else self.path
        return "\n".join(
            [
                f"wrote {shown} ({self.provider.name}): one `doit run_phase` per job, pushed with a lease",
                "next: read its header (the CI variables to set), commit it, then push a runs/<run>/plan.yaml "
                "or start a run by hand with the run id",
            ]
        )


def write_ci(workspace: Path, name: str, output: str = "") -> CiWritten:
    """Write provider `name`'s template to `output` (default: where the provider reads it)."""
    chosen = provider(name)
    workspace = Path(workspace)
    if not workspace.is_dir():
        raise InvalidInput(f"{workspace} is not a directory", "run init_ci in your repository's checkout")
    rel = Path(output) if output else Path(chosen.default_path)
    path = rel if rel.is_absolute() else workspace / rel
    if path.exists() or path.is_symlink():
        raise InvalidInput(
            f"{path} already exists; init_ci never overwrites a file",
            f"merge the template by hand: write it elsewhere (`doit init_ci --provider {chosen.name} "
            f"--output ci/autopack-{chosen.name}.yml`) and compare, or move {path} away and rerun",
        )
    if path.parent.exists() and not path.parent.is_dir():
        raise InvalidInput(f"{path.parent} is not a directory", "choose another --output")
    write_text_atomic(path, template_text(chosen.name))
    return CiWritten(chosen, path)
