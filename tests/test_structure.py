"""The shape of the code: the modules import each other without a cycle (type-checking imports included) and as
docs/ALGORITHM.md §10 says, the training loop and the schema name no method, and the README is a short front
door."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO_ROOT

MAX_README_BYTES = 20 * 1024
PACKAGES = ("agent", "methods")  # one node each in the diagram


def product_modules() -> dict[str, Path]:
    """Every importable module of the project by its dotted name (setup.py, bench/ and tests/ left out)."""
    files = [*REPO_ROOT.glob("*.py"), *(path for package in PACKAGES for path in (REPO_ROOT / package).glob("*.py")),
             REPO_ROOT / "scripts" / "sweep.py"]  # fmt: skip
    modules = {}
    for path in files:
        if path.name == "setup.py":
            continue
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules["sweep" if parts[0] == "scripts" else name] = path
    return modules


def project_imports(path: Path, known: set[str], type_checking: bool = False) -> set[str]:
    """The project modules `path` imports: module level and inside functions; with `type_checking`, also what
    only a type checker reads (`if TYPE_CHECKING:`), which never executes."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if not type_checking and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.add(child.module)
                found.update(f"{child.module}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return found & known


def import_graph(type_checking: bool = False) -> dict[str, set[str]]:
    modules = product_modules()
    return {name: project_imports(path, set(modules), type_checking) - {name} for name, path in modules.items()}


def test_the_modules_import_each_other_without_a_cycle_type_checking_imports_included() -> None:
    graph = import_graph(type_checking=True)
    state: dict[str, str] = {}

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                return [*path, module, imported]
            if imported not in state and (found := cycle_from(imported, [*path, module])):
                return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = cycle_from(module, [])
            assert cycle is None, " -> ".join(cycle)
    assert "human_teacher" not in graph["labelling_app"] and "queries" not in graph["reward_model"]  # old cycles
    assert not any(name in graph[module] for module in graph for name in ("bench", "tests", "sweep"))
    assert graph["registry"] == set() and graph["config_rules"] == set()  # what every method may import


def test_the_training_loop_and_the_schema_name_no_method() -> None:
    """A method is wired in through the registries only: its name appears in its own module and preset, never in
    train_QPA.py or config_schema.py (comments included)."""
    names = sorted(path.stem for path in (REPO_ROOT / "methods").glob("*.py") if path.stem != "__init__")
    assert {"surf", "rune", "policer", "ppe"} <= set(names)
    for module in ("train_QPA.py", "config_schema.py"):
        text = (REPO_ROOT / module).read_text()
        named = [name for name in names if re.search(rf"\b{name}\b", text, re.IGNORECASE)]
        assert named == [], f"{module} names {named}"


def test_the_module_diagram_of_algorithm_md_is_the_import_graph() -> None:
    text = (REPO_ROOT / "docs" / "ALGORITHM.md").read_text()
    section = text[text.index("## 10.") :]
    diagram = section[section.index("```\n") + 4 : section.index("\n```", section.index("```\n") + 4)]
    documented = {}
    for line in diagram.splitlines():
        name, uses = re.match(r"^(\S+)\s.*\suses (.+)$", line).groups()
        node = name.removesuffix(".py").rstrip("/")
        documented[node] = set() if uses == "nothing" else set(uses.split(", "))
    actual: dict[str, set[str]] = {}
    for module, imported in import_graph().items():
        node = module.split(".")[0]
        if node == "sweep":
            continue
        actual.setdefault(node, set()).update(name.split(".")[0] for name in imported)
    actual = {node: uses - {node} for node, uses in actual.items()}
    assert documented == actual


def test_the_readme_is_a_short_front_door() -> None:
    readme = (REPO_ROOT / "README.md").read_bytes()
    assert len(readme) <= MAX_README_BYTES
    for page in re.findall(r"\]\((docs/[\w.]+\.md)\)", readme.decode()):
        assert (REPO_ROOT / page).is_file(), page
