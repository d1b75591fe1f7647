"""The README shows each command with its real output: run every `$ nncli …` line as a user would
(a shell, the installed script, from a folder holding the repository's examples) and compare.

A line holding only `…` in the README stands for rows left out there. The numbers themselves are
proven bit for bit against PyTorch, computed on the same machine, by the other tests; this one
keeps the README's copies honest without depending on the CPU: a float32 result's last digit
differs between AVX2, AVX-512 and NEON kernels, so numbers match when they agree to a relative
1e-5 or to one unit of the last digit the README shows (a table's 4th decimal). Everything else
on the line must match exactly.
"""

from __future__ import annotations

import os
import re
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


NUMBER = re.compile(r"(?<![\w.])-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def same_line(expected: str, got: str) -> bool:
    """Equal text, with numbers equal up to the last digits a CPU may change."""
    if expected == got:
        return True
    split_e, split_g = NUMBER.split(expected), NUMBER.split(got)
    numbers_e, numbers_g = NUMBER.findall(expected), NUMBER.findall(got)
    if split_e != split_g or len(numbers_e) != len(numbers_g):
        return False  # the words, the spacing (a table's borders) or the count of numbers differ
    return all(close(e, g) for e, g in zip(numbers_e, numbers_g))


def close(expected: str, got: str) -> bool:
    if expected == got:
        return True
    if not any(c in expected.lower() for c in ".e"):
        return False  # integers (counts, classes, rows) are exact on every CPU
    a, b = float(expected), float(got)
    mantissa = expected.lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exponent = int(expected.lower().split("e")[1]) if "e" in expected.lower() else 0
    last_digit = 10.0 ** (exponent - decimals) if decimals >= 4 else 0.0  # a rounded table cell may flip its last digit
    return abs(a - b) <= max(1e-5 * abs(a), last_digit * 1.01)


def matches(expected: list[str], got: list[str]) -> bool:
    if not expected:
        return not got
    if expected[0] == "…":
        return any(matches(expected[1:], got[i:]) for i in range(len(got) + 1))
    return bool(got) and same_line(expected[0], got[0]) and matches(expected[1:], got[1:])


def test_numbers_match_only_within_what_a_cpu_can_change() -> None:
    assert same_line("1,0.24137509,0.5", "1,0.24137506,0.5")  # AVX-512 against AVX2, float32
    assert same_line("│ 0.7118 │", "│ 0.7119 │")  # a table's last shown digit
    assert not same_line("│ 0.7118 │", "│ 0.7121 │")
    assert not same_line("1,0.2413,0.5", "1,0.2413,0.6")
    assert not same_line("loss 0.5", "loss  0.5")
    assert not same_line("prob_0", "prob_1")


def test_the_readme_has_sessions_for_every_command() -> None:
    shown = {cmd.split()[1] for cmd, _ in readme_sessions()}
    assert {"forward", "loss", "onehot", "grads", "step", "params", "init", "train", "evaluate"} <= shown


@pytest.mark.slow
def test_every_readme_command_prints_what_the_readme_shows(tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = dict(
        os.environ, COLUMNS="80", NO_COLOR="1", PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    )
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
