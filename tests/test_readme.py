"""The README's two commands are the contract with a new user; CI must run the second verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fenced_blocks() -> list[str]:
    return re.findall(r"```(?:bash|sh|shell|console)?\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_opens_with_quickstart_then_tests() -> None:
    first, second = fenced_blocks()[:2]
    assert "edgemill demo" in first and "python3 -m venv" in first
    assert "pytest" in second and "python3 -m venv" in second


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = fenced_blocks()[1].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text()
