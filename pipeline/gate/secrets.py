"""The gate's secret scan over a patch's added lines (the catalogue:
`pipeline.core.secret_catalogue`, shared with the masking of the record)."""

from __future__ import annotations

from pipeline.core import secret_catalogue
from pipeline.core.masking import secret_values
from pipeline.gate.evidence import gate_check
from pipeline.gate.patch import ParsedPatch
from pipeline.models.reports import GateCheck


def check_secrets(patch: ParsedPatch) -> GateCheck:
    """No added line carries something that looks like a credential, nor the value of a
    secret in the supervisor's environment; a `.env`-style file holds no secret value."""
    found: list[str] = []
    withheld = secret_values()
    for fc in patch.files:
        if fc.is_binary:
            continue
        dotenv = secret_catalogue.is_dotenv(fc.path)
        for line in fc.added_lines:
            found.extend(
                f"{fc.path}:{line.number}: {hit.kind} {hit.shown(line.text)}"
                for hit in secret_catalogue.find(line.text, dotenv=dotenv)
            )
            found.extend(
                f"{fc.path}:{line.number}: a secret of the supervisor's environment ({len(v)} chars)"
                for v in withheld
                if v in line.text
            )
    if found:
        return gate_check("secrets", False, "added lines contain what looks like secrets", found)
    return gate_check("secrets", True, "no secrets in added lines")
