"""The package's layout as a rule: commands on top, stage packages below them, leaves at the bottom.

Read from the source with ``ast`` (nothing is imported or run): every ``import kit...`` and
``from kit... import ...`` of every module under kit/, function-level imports included, since a cycle
hidden in a function is still a cycle of the design.

- a command is a top-level module that runs as ``__main__`` (``python -m kit.X``); no module imports one;
- a leaf is any other top-level module: it imports leaves only;
- a stage is a folder under kit/: it imports leaves, itself and the stages before it (data, model ->
  training, inference -> kaggle; training and inference never import each other);
- no two modules import each other, and no longer cycle either;
- each stage's ``__init__.py`` is a docstring that says its job and what it may import, and imports nothing.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parent.parent / "kit"
# What each stage may import besides the leaves and itself.
STAGE_IMPORTS = {
    "data": set(),
    "model": {"data"},
    "training": {"data", "model"},
    "inference": {"data", "model"},
    "kaggle": {"data", "model", "training", "inference"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(KIT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """``{kit.dotted.name: path}`` of every module of the package."""
    return {module_name(path): path for path in sorted(KIT.rglob("*.py")) if "__pycache__" not in path.parts}


def imported(path: Path, known: set[str]) -> set[str]:
    """The kit modules ``path`` imports (a ``from kit.pkg import name`` names module kit.pkg.name where
    there is one, else kit.pkg itself)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "kit")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "kit":
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return {name for name in found if name != "kit"}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(path, set(found)) - {name} for name, path in found.items()}


def commands() -> set[str]:
    return {f"kit.{path.stem}" for path in KIT.glob("*.py") if 'if __name__ == "__main__":' in path.read_text()}


def kind(module: str, command_names: set[str]) -> str:
    """"command", "leaf", or the stage's name."""
    parts = module.split(".")
    if len(parts) == 1:  # kit/__init__.py
        return "leaf"
    if len(parts) == 2 and (KIT / f"{parts[1]}.py").is_file():
        return "command" if module in command_names else "leaf"
    return parts[1]


def layout_problems(graph: dict[str, set[str]], command_names: set[str]) -> list[str]:
    """Every import that breaks the layout's rules, in words."""
    problems = []
    for module, targets in sorted(graph.items()):
        source = kind(module, command_names)
        for target in sorted(targets):
            goes_to = kind(target, command_names)
            if goes_to == "command":
                problems.append(f"{module} imports the command {target}")
            elif source == "leaf" and goes_to != "leaf":
                problems.append(f"the leaf {module} imports {target} (stage {goes_to})")
            elif source in STAGE_IMPORTS and goes_to not in {"leaf", source, *STAGE_IMPORTS[source]}:
                problems.append(f"stage {source} ({module}) imports stage {goes_to} ({target})")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of two or more modules (Tarjan), each listed from its
    smallest name."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_top_holds_the_commands_and_the_leaves_and_the_stages_are_folders():
    assert commands() == {f"kit.{name}" for name in ("train", "tune", "infer", "pseudo", "validate", "build_kernel",
                                                     "boundary_table", "cell_type_classifier", "push")}
    assert {path.name for path in KIT.iterdir() if path.is_dir() and path.name != "__pycache__"} == set(STAGE_IMPORTS)


def test_no_module_imports_a_command_and_every_stage_imports_only_what_its_docstring_allows():
    assert layout_problems(import_graph(), commands()) == []


def test_no_two_modules_import_each_other_nor_form_a_longer_cycle():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("stage", sorted(STAGE_IMPORTS))
def test_each_stage_package_says_its_job_and_what_it_may_import_and_imports_nothing(stage):
    tree = ast.parse((KIT / stage / "__init__.py").read_text(encoding="utf-8"))
    doc = ast.get_docstring(tree)
    assert doc and f"the {stage} stage" in doc.lower() and "May import" in doc
    assert [node for node in tree.body if not isinstance(node, ast.Expr)] == []


def test_the_checks_catch_what_they_are_for():
    """The rules fail on a graph that breaks them, so that a passing run means something."""
    graph = {"kit.data.sartorius": {"kit.train"}, "kit.rle": {"kit.model.network"},
             "kit.training.loop": {"kit.inference.ensemble"}, "kit.model.network": {"kit.data.sartorius"},
             "kit.a": {"kit.b"}, "kit.b": {"kit.a"}}
    problems = layout_problems(graph, {"kit.train"})
    assert "kit.data.sartorius imports the command kit.train" in problems
    assert "the leaf kit.rle imports kit.model.network (stage model)" in problems
    assert "stage training (kit.training.loop) imports stage inference (kit.inference.ensemble)" in problems
    assert not [p for p in problems if "kit.model.network imports" in p]  # model -> data is allowed
    assert cycles(graph) == [["kit.a", "kit.b"]]
    assert cycles({"kit.x": {"kit.y"}, "kit.y": {"kit.z"}, "kit.z": {"kit.x"}}) == [["kit.x", "kit.y", "kit.z"]]
