"""Docs that cannot lie: every command in README.md and docs/*.md parses with its own parser.

For each fenced shell block, each ``python -m kit.X ...`` / ``python -m benchmarks.X ...`` line
(also after ``&&`` and as ``torchrun ... -m kit.X``) is parsed by that command's
``get_args_parser()`` (nothing runs), and every relative path a line names must exist in the
repository or be made by an earlier line of the same page (an ``--out``, a download folder, ...).
Placeholders in capitals are allowed where the page defines them.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
# The capitals a page may use in place of a value; the page must define each one it uses (in prose,
# as `DATA`), so the reader knows what to type.
PLACEHOLDERS = {"DATA", "YOU", "N", "NAME", "OUT", "DIR", "FILE", "ENV", "LINES", "ID"}
# Folders outside the repository that the docs name: the development machine's real data.
OUTSIDE = ("../shared/",)
PATH_SUFFIXES = (".txt", ".py", ".sh", ".toml", ".cfg", ".md")
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Line:
    """One shell command of a page: where it is and its words (a line after ``&&`` is its own)."""

    page: str
    number: int
    words: tuple[str, ...]

    def where(self) -> str:
        return f"{self.page}:{self.number}: {' '.join(self.words)}"


def shell_lines(text: str, page: str = "page.md") -> list[Line]:
    """The commands of ``text``'s fenced shell blocks, continuations joined, comments stripped."""
    lines: list[Line] = []
    for block in FENCE.finditer(text):
        if block.group(1) not in SHELL_LANGUAGES:
            continue
        first = text.count("\n", 0, block.start(2)) + 1
        for offset, command in joined(block.group(2)):
            command = re.sub(r"^\s*\$ ", "", command)  # a console block's prompt
            words = shlex.split(command, comments=True)
            for segment in split_on(words, {"&&", "||", ";", "|"}):
                if segment:
                    lines.append(Line(page, first + offset, tuple(segment)))
    return lines


def joined(block: str) -> list[tuple[int, str]]:
    """(line offset, command) with backslash continuations joined onto their first line."""
    commands: list[tuple[int, str]] = []
    pending, start = "", 0
    for offset, line in enumerate(block.splitlines()):
        if not pending:
            start = offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        commands.append((start, pending + line))
        pending = ""
    if pending:
        commands.append((start, pending))
    return commands


def split_on(words: list[str], separators: set[str]) -> list[list[str]]:
    segments: list[list[str]] = [[]]
    for word in words:
        if word in separators:
            segments.append([])
        else:
            segments[-1].append(word)
    return segments


def kit_command(words: tuple[str, ...]) -> tuple[str, list[str]] | None:
    """``("kit.train", argv)`` for ``python -m kit.train ...`` or ``torchrun ... -m kit.train ...``."""
    if not words or words[0] not in ("python", "python3", "torchrun") or "-m" not in words:
        return None
    at = words.index("-m")
    module = words[at + 1] if at + 1 < len(words) else ""
    if not module.startswith(("kit.", "benchmarks.")):
        return None
    return module, list(words[at + 2:])


@dataclass
class Check:
    """What reading one page found wrong, and the paths its earlier lines made."""

    page_text: str
    problems: list[str] = field(default_factory=list)
    made: set[str] = field(default_factory=set)

    def line(self, line: Line) -> None:
        command = kit_command(line.words)
        if command is not None:
            self.parse(line, *command)
        inputs, outputs = paths_of(line.words)
        for path in inputs:
            self.path(line, path)
        self.made.update(path.rstrip("/") for path in outputs)

    def parse(self, line: Line, module: str, argv: list[str]) -> None:
        try:
            parser = importlib.import_module(module).get_args_parser()
        except (ImportError, AttributeError) as error:
            self.problems.append(f"{line.where()}\n    {module} has no get_args_parser(): {error}")
            return
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                namespace = parser.parse_args(argv)
        except SystemExit:
            message = stderr.getvalue().strip().splitlines()
            self.problems.append(f"{line.where()}\n    {message[-1] if message else 'refused'}")
            if "--out" in argv[:-1]:  # one wrong flag is one problem, not one more for each later line
                self.made.add(argv[argv.index("--out") + 1].rstrip("/"))
            return
        for name in ("out", "work"):
            value = getattr(namespace, name, None)
            if value is not None:
                self.made.add(str(value).rstrip("/"))

    def path(self, line: Line, path: str) -> None:
        words = set(re.split(r"[/.\-=:]", path))
        if words & PLACEHOLDERS:
            for placeholder in sorted(words & PLACEHOLDERS):
                self.placeholder(line, placeholder)
            return
        if path.startswith(OUTSIDE) or (REPO / path).exists():
            return
        if any(path == made or path.startswith(made + "/") for made in self.made):
            return
        self.problems.append(f"{line.where()}\n    {path}: not in the repository, nor made by an earlier line")

    def placeholder(self, line: Line, name: str) -> None:
        if f"`{name}`" not in prose(self.page_text):
            self.problems.append(f"{line.where()}\n    placeholder {name} is not defined on the page (as `{name}`)")


def prose(text: str) -> str:
    return FENCE.sub("", text)


def paths_of(words: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(relative paths a command reads, folders or files it makes), by the commands the docs use."""
    outputs: list[str] = []
    flags = {("kaggle", "kernels", "output"): "-p", ("kaggle", "competitions", "download"): "-p",
             ("unzip",): "-d", ("tar",): "-C"}
    for prefix, flag in flags.items():
        if words[:len(prefix)] == prefix and flag in words[:-1]:
            outputs.append(words[words.index(flag) + 1])
    if words[0] == "mkdir":
        outputs.extend(word for word in words[1:] if not word.startswith("-"))
    if words[0] == "cp":
        outputs.append(words[-1])
    candidates = [word.split("=", 1)[1] if re.match(r"-{0,2}[\w-]+=", word) else word for word in words[1:]]
    inputs = [word for word in candidates if word not in outputs and looks_like_path(word)]
    return inputs, outputs


def looks_like_path(word: str) -> bool:
    if " " in word or word.startswith(("-", "/", "$", "~", "http", "'", '"')) or "://" in word:
        return False
    return "/" in word or word.endswith(PATH_SUFFIXES)


def check_page(text: str, page: str) -> list[str]:
    check = Check(text)
    for line in shell_lines(text, page):
        check.line(line)
        for word in line.words:
            if word in PLACEHOLDERS:
                check.placeholder(line, word)
    return check.problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_documented_command_parses_and_names_real_paths(page):
    problems = check_page(page.read_text(), page.relative_to(REPO).as_posix())
    assert not problems, "\n".join(problems)


def test_the_pages_exist_and_hold_commands():
    names = {page.relative_to(REPO).as_posix() for page in PAGES}
    assert {"README.md", "docs/kaggle.md", "docs/training.md", "docs/inference.md", "docs/reference.md",
            "docs/architecture.md", "docs/results.md", "docs/compatibility.md"} <= names
    commands = [line for page in PAGES for line in shell_lines(page.read_text()) if kit_command(line.words)]
    assert len(commands) > 30


def test_every_command_module_named_anywhere_exists():
    for page in PAGES:
        for module in set(re.findall(r"python -m ((?:kit|benchmarks)\.[a-z_]\w*)", page.read_text())):
            assert (REPO / (module.replace(".", "/") + ".py")).exists(), f"{page.name}: {module}"


# --- the checker itself, on small pages ---------------------------------------------------------------

GOOD = """\
`DATA` is the data folder.

```bash
python -m kit.train --variant hot-unet --data DATA --out runs --epochs 1 \\
    --device cpu   # a comment
python -m kit.infer --data DATA --weights runs/hot-unet.pt --out runs/sub.csv && python -m kit.tune --data DATA --weights runs/hot-unet.pt
torchrun --nproc_per_node 2 -m kit.train --variant hot-unet --data DATA --out runs
python -m kit.boundary_table fit --data DATA --out runs/lut.npz
pip install -r benchmarks/requirements-cellpose.txt
```
"""


def test_the_checker_passes_a_correct_page():
    assert check_page(GOOD, "good.md") == []
    assert len(shell_lines(GOOD)) == 6  # continuation joined, && split


def test_the_checker_fails_a_renamed_flag():
    problems = check_page(GOOD.replace("--epochs 1", "--epoch-count 1"), "bad.md")
    assert len(problems) == 1
    assert "bad.md:4:" in problems[0] and "unrecognized arguments: --epoch-count" in problems[0]


def test_the_checker_fails_a_renamed_flag_after_and_and_in_a_subcommand():
    bad = GOOD.replace("kit.tune --data", "kit.tune --dataset").replace("fit --data", "fit --folder")
    problems = check_page(bad, "bad.md")
    assert len(problems) == 2 and all("unrecognized arguments" in p for p in problems)


def test_the_checker_fails_a_mistyped_choice_and_a_missing_command():
    bad = GOOD.replace("--variant hot-unet --data DATA --out runs --epochs", "--variant hot-unett --data DATA "
                       "--out runs --epochs").replace("kit.boundary_table", "kit.postprocess")
    problems = check_page(bad, "bad.md")
    assert any("did you mean 'hot-unet'" in p for p in problems)
    assert any("kit.postprocess has no get_args_parser()" in p for p in problems)


def test_the_checker_fails_a_path_nothing_made():
    bad = GOOD.replace("--weights runs/hot-unet.pt --out", "--weights models/hot-unet.pt --out")
    bad = bad.replace("requirements-cellpose.txt", "requirements-cellpos.txt")
    problems = check_page(bad, "bad.md")
    assert [p.splitlines()[1].strip().split(":")[0] for p in problems] == [
        "models/hot-unet.pt", "benchmarks/requirements-cellpos.txt"]


def test_the_checker_fails_a_path_used_before_the_line_that_makes_it():
    lines = GOOD.splitlines(keepends=True)
    infer = next(i for i, line in enumerate(lines) if "kit.infer" in line)
    reordered = "".join(lines[:3] + [lines[infer]] + lines[3:infer] + lines[infer + 1:])
    assert any("runs/hot-unet.pt: not in the repository" in p for p in check_page(reordered, "bad.md"))


def test_the_checker_fails_an_undefined_placeholder():
    problems = check_page(GOOD.replace("`DATA` is the data folder.", ""), "bad.md")
    assert problems and all("placeholder DATA is not defined" in p for p in problems)
