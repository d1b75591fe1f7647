"""The README shows each command with its real output: run every `$ nncli …` line as a user would
(a shell, the installed script, from a folder holding the repository's examples) and compare.

A line holding only `…` in the README stands for rows left out there. The numbers themselves are
proven against PyTorch by the other tests; this one keeps the README's copies of them honest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_sessions() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each `$ ` line inside the README's code blocks."""
    sessions, fence, output = [], False, None
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence, output = not fence, None
        elif fence and line.startswith("$ "):
            output = []
            sessions.append((line[2:], output))
        elif output is not None:
            output.append(line)
    return sessions


def matches(expected: list[str], got: list[str]) -> bool:
    if not expected:
        return not got
    if expected[0] == "…":
        return any(matches(expected[1:], got[i:]) for i in range(len(got) + 1))
    return bool(got) and expected[0] == got[0] and matches(expected[1:], got[1:])


def test_the_readme_has_sessions_for_every_command() -> None:
    shown = {cmd.split()[1] for cmd, _ in readme_sessions()}
    assert {"forward", "loss", "onehot", "grads", "step", "params", "init", "train", "evaluate"} <= shown


def test_every_readme_command_prints_what_the_readme_shows(tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = dict(os.environ, COLUMNS="80", NO_COLOR="1", PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env.pop("FORCE_COLOR", None)
    for cmd, lines in readme_sessions():  # in order: evaluate reads the weights that train wrote
        expected = _trimmed(lines)
        run = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        got = (run.stdout + run.stderr).rstrip("\n").splitlines()
        assert "Traceback" not in run.stderr, cmd
        if not matches(expected, got):
            pytest.fail(f"README: {cmd}\n--- README ---\n" + "\n".join(expected) + "\n--- real ---\n" + "\n".join(got))


def _trimmed(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines
