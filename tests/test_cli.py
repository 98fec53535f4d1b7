"""A mistyped choice is answered in one line that ends with the closest valid names (``kit.cli``)."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from kit import cli
from kit.model import variants

REPO = Path(__file__).resolve().parents[1]


def command_modules() -> list[str]:
    """Every ``python -m kit.X`` / ``python -m benchmarks.X`` command: a module that runs as ``__main__``."""
    return sorted(f"{path.parent.name}.{path.stem}" for folder in ("kit", "benchmarks")
                  for path in (REPO / folder).glob("*.py") if 'if __name__ == "__main__":' in path.read_text())


def parsers_of(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and its sub-command parsers."""
    subparsers = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return [parser, *(sub for action in subparsers for sub in action.choices.values())]


def test_the_commands_are_the_ones_the_docs_name():
    assert {"kit.train", "kit.build_kernel", "kit.boundary_table", "benchmarks.bench_kernels",
            "benchmarks.bench_instances"} <= set(command_modules())


@pytest.mark.parametrize("module", command_modules())
def test_every_command_parses_with_the_kit_parser(module):
    parser = importlib.import_module(module).get_args_parser()
    assert all(isinstance(p, cli.ArgumentParser) for p in parsers_of(parser))
    assert parser.prog == f"python -m {module}"


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_mistyped_variant_is_one_line_ending_with_the_closest_name():
    result = run("kit.train", "--variant", "hot-flow-unet-pluss")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "python -m kit.train: error: argument --variant: invalid choice 'hot-flow-unet-pluss'; "
        "did you mean 'hot-flow-unet-plus'?"]


def error_lines(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """What ``parser`` prints on stderr for ``argv``, which it must refuse with exit status 2."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as stop:
        parser.parse_args(argv)
    assert stop.value.code == 2
    return stderr.getvalue().splitlines()


def test_a_mistyped_subcommand_and_its_choice_are_one_line_each():
    parser = importlib.import_module("kit.boundary_table").get_args_parser()
    assert error_lines(parser, ["fitt"]) == [
        "python -m kit.boundary_table: error: argument command: invalid choice 'fitt'; did you mean 'fit'?"]
    assert error_lines(parser, ["fit", "--out", "x", "--split", "tran"]) == [
        "python -m kit.boundary_table fit: error: argument --split: invalid choice 'tran'; did you mean 'train'?"]


def test_a_name_nothing_resembles_lists_every_valid_one():
    assert cli.unknown_name("zzz", ["unet", "hot-unet"]) == "invalid choice 'zzz'; choose from unet, hot-unet"


def test_only_the_nearly_closest_names_are_suggested():
    assert cli.closest_names("hot-flow-unet-pluss", variants.VARIANTS) == ["hot-flow-unet-plus"]
    assert cli.closest_names("hot-unet-weigthed", variants.VARIANTS) == ["hot-unet-weighted"]
    assert cli.closest_names("vgg", variants.VARIANTS) == []


def test_other_errors_keep_the_usage_block():
    parser = cli.ArgumentParser(prog="p")
    parser.add_argument("--n", type=int, required=True)
    assert error_lines(parser, ["--n", "x"])[0].startswith("usage: p")


def test_the_kernel_builder_names_the_closest_variant_too():
    with pytest.raises(ValueError, match=r"did you mean 'hot-flow-unet-plus'\?$"):
        variants.get_variant("hot-flow-unet-pluss")
