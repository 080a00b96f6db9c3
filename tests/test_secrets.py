"""The secret catalogue (pipeline.core.secret_catalogue): one list of shapes for the gate and
the masking, a corpus of positives and negatives, and the record kept free of them.

Secrets below are assembled at run time (prefix + body) so this file holds none.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core import secret_catalogue
from pipeline.core.masking import MASK, mask_text
from pipeline.gate.patch import parse_patch
from pipeline.gate.secrets import check_secrets
from pipeline.run.driver import run_to_end
from testing.runs import make_workspace

R20 = "q8Zr3vN1xLp0Tg7KwE2s"  # 20 random-looking characters
R40 = R20 + "M5bY9cH4dJ6fA1gU3iO0"
HEX40 = "3a1a2b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a"
UUID = "123e4567-e89b-12d3-a456-426614174000"

POSITIVES: list[tuple[str, str]] = [
    ("AKIA" + "IOSFODNN7EXAMPLF", "AWS access key id"),
    ("ASIA" + "Y34FZKBOKMUTVV7A", "AWS access key id"),
    ("aws_key = 'AKIA" + "Z7VRSQ5TJN2XMY4P'", "AWS access key id"),
    ("ghp_" + R40[:36], "GitHub token"),
    ("gho_" + R40[:36], "GitHub token"),
    ("ghs_" + R40, "GitHub token"),
    ("ghu_" + R40[:37], "GitHub token"),
    ("ghr_" + R40[:36], "GitHub token"),
    ("github_pat_" + "11ABCDEFG0" + R20 + "_xyz", "GitHub token"),
    ("git clone https://x:ghp_" + R40[:36] + "@github.com/o/r", "GitHub token"),
    ("glpat-" + R20, "GitLab token"),
    ("CI_TOKEN: glpat-" + R20 + "xy", "GitLab token"),
    ("xoxb-" + "12345678901-" + R20, "Slack token"),
    ("xoxp-" + "2222222222-" + R20, "Slack token"),
    ("https://hooks.slack.com/services/" + "T000/B000/" + R20, "Slack webhook"),
    ("sk-" + R40, "OpenAI key"),
    ("sk-proj-" + R40, "OpenAI key"),
    ("OPENAI_API_KEY=sk-" + R40, "OpenAI key"),
    ("sk-ant-" + "api03-" + R40, "Anthropic key"),
    ("export ANTHROPIC_API_KEY=sk-ant-" + "api03-" + R40, "Anthropic key"),
    ("AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q", "Google API key"),
    ("key=AIza" + "SyB" + "x" * 10 + "1234567890abcdefghij12", "Google API key"),
    ("sk_live_" + R20, "Stripe key"),
    ("rk_live_" + R20, "Stripe key"),
    ("npm_" + R40[:36], "npm token"),
    ("eyJhbGciOiJIUzI1NiJ9" + ".eyJzdWIiOiIxMjM0NTY3ODkwIn0." + "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "JWT"),
    ("Authorization: Bearer " + R40, "bearer token"),
    ("curl -H 'authorization: bearer " + R20 + "abc'", "bearer token"),
    ("-----BEGIN RSA " + "PRIVATE KEY-----", "private key block"),
    ("-----BEGIN OPENSSH " + "PRIVATE KEY-----", "private key block"),
    ("-----BEGIN " + "PRIVATE KEY-----", "private key block"),
    ("-----BEGIN PGP PRIVATE KEY " + "BLOCK-----", "private key block"),
    ('DB_PASSWORD = "' + R20 + '"', "hard-coded DB_PASSWORD"),
    ('"api_key": "' + R20 + '"', "hard-coded api_key"),
    ("export AWS_SECRET_ACCESS_KEY=" + R40, "hard-coded AWS_SECRET_ACCESS_KEY"),
    ("client_secret: " + R20, "hard-coded client_secret"),
    ("auth_token => '" + R20 + "'", "hard-coded auth_token"),
    ("SECRET_KEY=" + R20 + "x", "hard-coded SECRET_KEY"),
    ("private_key := `" + R20 + "`", "hard-coded private_key"),
    ("password='" + R20 + "'", "hard-coded password"),
    ("spring.datasource.password=" + R20, "hard-coded password"),
    ("  token: " + R20 + "==", "hard-coded token"),
]

NEGATIVES: list[str] = [
    f"commit {HEX40}",
    f'sha = "{HEX40}"',
    f"token = '{HEX40}'",  # a git SHA under a secret-looking name
    f"checksum: sha256:{HEX40}{HEX40[:24]}",
    f'"integrity_token": "sha512-{HEX40}"',
    f"id = '{UUID}'",
    f"api_key = '{UUID}'",
    "password = '${DB_PASSWORD}'",
    "export API_KEY=${API_KEY}",
    "token: ${{ secrets.GITHUB_TOKEN }}",
    "password: {{ vault_password }}",
    "api_key = '<your-api-key-here>'",
    "SECRET_KEY = os.environ['SECRET_KEY']",
    "token = os.getenv('TOKEN')",
    "const token = process.env.API_TOKEN;",
    "api_key = settings.OPENAI_API_KEY",
    "password = request.form.password_field",
    "password = 'changeme'",
    "password = 'example-password-123'",
    "token = 'xxxxxxxxxxxxxxxxxxxx'",
    "secret = '********************'",
    "password = 'hunter2'",  # too short to be a generated secret
    "token = 'aaaaaaaaaaaaaaaaaaaaaaaa'",  # no entropy
    "def get_token(self) -> str:",
    "token_count = 1234567890123456",
    "max_tokens: 4096",
    "passwords_match = check(a, b)",
    "the task-oriented sk-learn pipeline",
    "disk-usage-report-for-the-monthly-summary",
    "ghp_short",
    "AKIA_NOT_A_KEY",
    "AIzaShort",
    "eyJ not a jwt",
    "Authorization: Bearer ${TOKEN}",
    "Authorization: Bearer <token>",
    "-----BEGIN PUBLIC KEY-----",
    "-----BEGIN CERTIFICATE-----",
    "https://hooks.slack.com/",
    "sk-" + "this-is-a-long-kebab-case-name",
    "x = 1  # a comment about tokens and passwords",
    "TOKEN_SHAPES = (",
    "access_key_id_env = 'AWS_ACCESS_KEY_ID'",
    "password = None",
    "token = null",
]


@pytest.mark.parametrize(("text", "kind"), POSITIVES)
def test_positive(text: str, kind: str) -> None:
    hits = secret_catalogue.find(text)
    assert [h.kind for h in hits] == [kind], text
    masked, count = mask_text(text)
    assert count == 1 and MASK in masked
    shown = hits[0].shown(text)
    if hits[0].keep >= 0:
        assert text[hits[0].start : hits[0].end] not in shown


@pytest.mark.parametrize("text", NEGATIVES)
def test_negative(text: str) -> None:
    assert secret_catalogue.find(text) == []
    assert mask_text(text) == (text, 0)


def test_corpus_is_large_enough() -> None:
    assert len(POSITIVES) >= 40 and len(NEGATIVES) >= 40


@pytest.mark.parametrize(
    ("name", "line", "refused"),
    [
        ("pkg/.env", "ANTHROPIC_API_KEY=" + "abc12345xyz", True),
        ("pkg/.env", "DB_PASSWORD=hunter22", True),
        (".env.local", "export STRIPE_SECRET=" + "s3cr3tvalue", True),
        ("deploy/prod.env", "API_TOKEN=abcdefgh1", True),
        ("pkg/.env", "DB_PASSWORD=${DB_PASSWORD}", False),
        ("pkg/.env", "DEBUG=true", False),
        ("pkg/settings.env.example", "DB_PASSWORD=hunter22", False),
    ],
)
def test_dotenv_files(name: str, line: str, refused: bool) -> None:
    patch = f"diff --git a/{name} b/{name}\nnew file mode 100644\n--- /dev/null\n+++ b/{name}\n@@ -0,0 +1 @@\n+{line}\n"
    result = check_secrets(parse_patch(patch))
    assert (result.verdict == "fail") is refused, result.evidence


def test_supervisor_secret_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERNAL_DB_PASSWORD", "plain words only")
    patch = (
        "diff --git a/a.txt b/a.txt\nnew file mode 100644\n--- /dev/null\n+++ b/a.txt\n@@ -0,0 +1 @@\n"
        "+plain words only\n"
    )
    result = check_secrets(parse_patch(patch))
    assert result.verdict == "fail"
    assert "supervisor's environment" in result.evidence[0] and "plain words" not in result.evidence[0]


@pytest.mark.parametrize(
    "line",
    ["a" * 1_000_000, "a=" * 500_000, "token=abcdefgh " * 60_000, "passwordpassword" * 60_000, "sk-" * 300_000,
     "-----BEGIN RSA PRIVATE KEY----- " * 30_000],
)
def test_long_lines_finish(line: str) -> None:
    """Adversarial 1 MB lines are scanned (bench/secrets.py prints the times)."""
    secret_catalogue.find(line)


def test_multiline_key_block_is_masked_whole() -> None:
    text = "before\n-----BEGIN EC " + "PRIVATE KEY-----\nMHcCAQEEI\nabc\n-----END EC " + "PRIVATE KEY-----\nafter"
    masked, count = mask_text(text)
    assert masked == f"before\n{MASK}\nafter" and count == 1


def test_a_refused_secret_stays_out_of_the_record_and_the_branch(tmp_path: Path) -> None:
    key = "sk-ant-" + "api03-" + R40
    body = (
        f"write('pkg/.env', 'ANTHROPIC_API_KEY={key}\\n')\n"
        "write('mod.py', 'X = 2\\n')\n"
        f"result(status='success', notes='used {key} to test')\n"
    )
    setup = make_workspace(tmp_path, files={"mod.py": "X = 1\n"}, agent_body=body)
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    run = setup.run_json()
    assert run["state"] == "DONE_FAILED_POLICY_VIOLATION"
    leaks = [str(p) for p in setup.run_dir.rglob("*") if p.is_file() and key in p.read_text(errors="replace")]
    assert leaks == [], f"the record keeps the secret in {leaks}"
    assert key not in setup.git("log", "-p", "--all")
    quarantined = setup.workspace / ".autopack" / "quarantine" / setup.run_id / "P1" / "1.diff"
    assert key in quarantined.read_text()
    assert "***" in (setup.phase_dir("P1") / "attempts" / "1" / "patch.diff").read_text()
    assert "***" in setup.phase_json("P1")["attempts"][0]["result_notes"]


@pytest.mark.parametrize(
    ("patch", "named"),
    [
        (
            "diff --git a/vendor/lib b/vendor/lib\nnew file mode 160000\nindex 0000000..1234567\n--- /dev/null\n"
            "+++ b/vendor/lib\n@@ -0,0 +1 @@\n+Subproject commit 1234567890123456789012345678901234567890\n",
            "vendor/lib: a gitlink",
        ),
        (
            "diff --git a/.gitmodules b/.gitmodules\nnew file mode 100644\n--- /dev/null\n+++ b/.gitmodules\n"
            "@@ -0,0 +1,3 @@\n+[submodule \"x\"]\n+\tpath = x\n+\turl = ext::sh -c touch% /tmp/pwned\n",
            ".gitmodules: .gitmodules",
        ),
    ],
    ids=["gitlink", "gitmodules"],
)
def test_submodules_are_refused(tmp_path: Path, patch: str, named: str) -> None:
    from pipeline.gate.paths import check_paths_safe

    result = check_paths_safe(parse_patch(patch), tmp_path)
    assert result.verdict == "fail" and result.policy
    assert any(e.startswith(named) and "by hand" in e for e in result.evidence), result.evidence
