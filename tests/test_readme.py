"""The README and the pages in docs/ show each command with its real output: run every `$ nncli …`
line as a user would (a shell, the installed script, from a folder holding the repository's
examples) and compare.

A line holding only `…` in a session stands for rows left out there. The numbers themselves are
proven bit for bit against PyTorch, computed on the same machine, by the other tests; this one
keeps the docs' copies honest without depending on the CPU: a float32 result's last digit
differs between AVX2, AVX-512 and NEON kernels, so numbers match when they agree to a relative
1e-5 or to one unit of the last digit the page shows (a table's 4th decimal). Everything else
on the line must match exactly.

Each page's sessions run in order in a folder of the page's own (evaluate reads the weights that
train wrote); a session run alone first runs the page's sessions before it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


class Session:
    """One `$ ` line of a page's code block and the output shown under it."""

    def __init__(self, page: Path, line: int, command: str) -> None:
        self.page, self.line, self.command, self.output = page, line, command, []

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT).as_posix()}:{self.line}"


def sessions(page: Path) -> list[Session]:
    """Each `$ ` line inside the page's code blocks, with the lines that follow it."""
    found, fence, current = [], False, None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            fence, current = not fence, None
        elif fence and line.startswith("$ "):
            current = Session(page, number, line[2:])
            found.append(current)
        elif current is not None:
            current.output.append(line)
    return found


ALL = [(page, i) for page in PAGES for i in range(len(sessions(page)))]


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


def _commands() -> set[str]:
    """Every command `nncli --help` lists."""
    help_text = subprocess.run(
        [sys.executable, "-m", "nncli", "--help"],
        capture_output=True,
        text=True,
        env=dict(os.environ, COLUMNS="200"),
        check=True,
    ).stdout
    listed = help_text.split("Commands:", 1)[1]
    return {line.split()[0] for line in listed.splitlines() if line.startswith("  ") and line.split()}


def _shown(page: Path) -> set[str]:
    return {m.group(1) for s in sessions(page) for m in re.finditer(r"(?:^|[|;&]\s*)nncli (\w+)", s.command)}


# summary is params under torchinfo's name; clean's output names a process that is gone, a number no
# page can show: both are shown as commands without output
UNSHOWN = {"summary", "clean"}


@pytest.mark.parametrize("page", ["README.md", "docs/commands.md"])
def test_the_readme_and_the_commands_page_have_sessions_for_every_command(page: str) -> None:
    commands = _commands()
    assert {"forward", "loss", "onehot", "grads", "step", "params", "init", "train", "evaluate", "clean"} <= commands
    missing = commands - UNSHOWN - _shown(ROOT / page)
    assert not missing, f"{page} shows no `$ nncli CMD` session for {sorted(missing)}"
    text = (ROOT / page).read_text(encoding="utf-8")
    assert all(f"nncli {name}" in text or name == "summary" for name in commands)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each page's folder (holding `examples/`) and how many of its sessions have run there."""
    made: dict[Path, list] = {}

    def folder(page: Path) -> list:
        if page not in made:
            where = tmp_path_factory.mktemp(page.stem)
            (where / "examples").symlink_to(ROOT / "examples")
            made[page] = [where, 0]
        return made[page]

    return folder


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    env = dict(os.environ, COLUMNS="80", NO_COLOR="1", PATH=path)
    env.pop("FORCE_COLOR", None)
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize(("page", "index"), ALL, ids=[sessions(page)[i].name for page, i in ALL])
def test_every_documented_command_prints_what_the_page_shows(folders, page: Path, index: int) -> None:
    state = folders(page)
    found = sessions(page)
    while state[1] < index:  # the page's earlier sessions first, as a reader runs them (train before evaluate)
        _run(found[state[1]].command, state[0])
        state[1] += 1
    session = found[index]
    expected = _trimmed(session.output)
    run = _run(session.command, state[0])
    state[1] = index + 1
    got = (run.stdout + run.stderr).rstrip("\n").splitlines()
    assert "Traceback" not in run.stderr, session.name
    if not matches(expected, got):
        shown, real = "\n".join(expected), "\n".join(got)
        pytest.fail(f"{session.name}: {session.command}\n--- the page ---\n{shown}\n--- real ---\n{real}")


def test_a_session_that_differs_from_its_page_fails(tmp_path: Path) -> None:
    """The comparison can fail: a shown output with one number changed, or one line too many, does not match."""
    session = next(s for s in sessions(ROOT / "README.md") if s.command.startswith("nncli onehot"))
    run = _run(session.command, tmp_path)
    got = run.stdout.rstrip("\n").splitlines()
    assert matches(_trimmed(session.output), got)
    assert not matches([*session.output[:1], "0,0,0,1", *session.output[2:]], got)
    assert not matches(_trimmed(session.output) + ["0,0,0,1"], got)


# -- links -------------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    seen: dict[str, int] = {}
    anchors, fence = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and re.match(r"#{1,6} ", line):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return LINK.findall(re.sub(r"`[^`\n]*`", "", text))


LINKED = [*PAGES, ROOT / "SECURITY.md", *sorted((ROOT / "benchmarks").glob("*.md"))]


def test_anchors_are_the_ones_github_makes() -> None:
    assert "train-evaluate" in _anchors(ROOT / "docs" / "commands.md")
    assert "forward-outputs-probabilities-classes" in _anchors(ROOT / "docs" / "commands.md")
    assert "where-nncli-forwards-time-goes" in _anchors(ROOT / "benchmarks" / "results.md")


@pytest.mark.parametrize("page", LINKED, ids=[p.relative_to(ROOT).as_posix() for p in LINKED])
def test_every_relative_link_leads_to_a_file_and_heading(page: Path) -> None:
    broken = []
    for link in _links(page):
        if re.match(r"[a-z]+:", link):
            continue  # https:, mailto:: not checked here
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_the_readme_stays_short() -> None:
    """The README is what nncli is, install, a quick start, one example per command and links; the
    reference lives in docs/."""
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


def _trimmed(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    """ "Develop and test" promises exactly what `.ci/run` runs: the same pytest command, the same extras."""
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    readme = (ROOT / "README.md").read_text(encoding="utf-8").split("## Develop and test", 1)[1].split("\n## ", 1)[0]
    ci_block = readme.split("```sh\n", 1)[1].split("```", 1)[0]  # the first block is CI's; the everyday tier follows
    shown = [line.strip() for line in ci_block.splitlines()]

    def pytest_lines(lines: list[str]) -> list[str]:
        return [line for line in lines if line.startswith("python -m pytest")]

    assert pytest_lines(ci) == pytest_lines(shown) != []
    assert all(extras in readme for extras in re.findall(r"-e '(\.\[[^\]]*\])'", "\n".join(ci)))
