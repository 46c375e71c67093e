"""The README's two set-up commands are what CI runs and what a fresh machine needs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def command_after(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- ci: {marker} -->\n```bash\n(.+)\n```", text)
    assert match, f"README.md has no command after <!-- ci: {marker} -->"
    return match.group(1)


def test_readme_has_exactly_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert text.count("<!-- ci: ") == 2


def test_torch_is_installed_from_the_cpu_wheel_before_anything_that_needs_it() -> None:
    for marker in ("main command", "test command"):
        command = command_after(marker)
        assert "pip install torch==2.13.0 &&" in command
        assert command.index("torch==2.13.0") < command.index("pip install -e")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "ci: test command" in ci
    assert command_after("test command").endswith("&& pytest")
