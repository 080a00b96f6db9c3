"""How long the secret catalogue takes over long lines (the gate scans every added line).

    .venv/bin/python bench/secrets.py

Prints seconds per 1 MB line for ordinary and adversarial shapes: minified code, one long
token, repeated prefixes that a backtracking pattern would rescan, many assignments.
"""

from __future__ import annotations

import time

from pipeline.core.secret_catalogue import find

MB = 1_000_000


def _lines() -> dict[str, str]:
    minified = "function a(b){return b.map(function(c){return c*2})};var token=x.y;" * (MB // 68)
    return {
        "minified JS": minified,
        "one 1 MB token": "a" * MB,
        "a=a=a=...": "a=" * (MB // 2),
        "ghp_ghp_...": "ghp_" * (MB // 4),
        "sk-sk-...": "sk-" * (MB // 3),
        "token=abcdefgh ...": "token=abcdefgh " * (MB // 15),
        "passwordpassword...": "password" * (MB // 8),
        "eyJabcdefgh. ...": "eyJabcdefgh." * (MB // 12),
        "-----BEGIN RSA PRIVATE KEY----- ...": "-----BEGIN RSA PRIVATE KEY----- " * (MB // 32),
        "Bearer <20 chars> ...": "Bearer abcdefghijklmnopqrs1 " * (MB // 28),
    }


def main() -> None:
    for name, line in _lines().items():
        started = time.perf_counter()
        hits = len(find(line))
        took = time.perf_counter() - started
        print(f"{name:40s} {len(line) / MB:5.2f} MB  {took:6.3f} s  {hits} hits")


if __name__ == "__main__":
    main()
