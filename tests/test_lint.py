"""CI enforces what `make lint` checks: ruff over the tree and mypy over the
package (plain everywhere, strict for the engine, the interface's errors, rpc/, switch/,
the service, the configuration and the program:
see [tool.mypy] in pyproject.toml). Both are in the test extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_ruff_clean() -> None:
    r = _run("ruff", "check", ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_clean() -> None:
    r = _run("mypy", "squeezed")
    assert r.returncode == 0, r.stdout + r.stderr
