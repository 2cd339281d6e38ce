"""The shape of the code, measured: the modules import each other without a cycle and as docs/ALGORITHM.md §10
says, no class is longer than 250 lines, every optimiser step is at most 4 calls below `Workspace.run`, and the
README is a short front door."""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, SMALL_NETWORKS, load_config

import train_QPA

MAX_CLASS_LINES = 250
MAX_CALLS_TO_AN_OPTIMISER_STEP = 4
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


def runtime_imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports when it runs: module level and inside functions; what only a type
    checker reads (`if TYPE_CHECKING:`) is left out, as it never executes."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.add(child.module)
                found.update(f"{child.module}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return found & known


def import_graph() -> dict[str, set[str]]:
    modules = product_modules()
    return {name: runtime_imports(path, set(modules)) - {name} for name, path in modules.items()}


def test_the_modules_import_each_other_without_a_cycle() -> None:
    graph = import_graph()
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


def test_no_class_is_longer_than_250_lines() -> None:
    sources = [*product_modules().values(), *REPO_ROOT.glob("custom_dmc2gym/**/*.py"),
               *REPO_ROOT.glob("custom_dmcontrol/**/*.py")]  # fmt: skip
    lengths = {
        f"{path.relative_to(REPO_ROOT)}:{node.name}": node.end_lineno - node.lineno + 1
        for path in sources
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
    }
    assert lengths["train_QPA.py:Workspace"] > 100  # the count sees the classes
    assert {name: length for name, length in lengths.items() if length > MAX_CLASS_LINES} == {}


def test_the_readme_is_a_short_front_door() -> None:
    readme = (REPO_ROOT / "README.md").read_bytes()
    assert len(readme) <= MAX_README_BYTES
    for page in re.findall(r"\]\((docs/[\w.]+\.md)\)", readme.decode()):
        assert (REPO_ROOT / page).is_file(), page


def optimiser_step_paths(workspace: train_QPA.Workspace) -> dict[str, int]:
    """Runs `workspace` under sys.setprofile and returns, for every Adam step reached, the chain of project
    functions from `Workspace.run` to it and its length (the step's own call included)."""
    optimiser_step = inspect.unwrap(torch.optim.Adam.step).__code__
    run_code = train_QPA.Workspace.run.__code__
    project = str(REPO_ROOT)
    paths: dict[str, int] = {}

    def trace(frame, event, arg) -> None:
        if event != "call" or frame.f_code is not optimiser_step:
            return
        callers, caller = [], frame.f_back
        while caller is not None and caller.f_code is not run_code:
            filename = caller.f_code.co_filename
            if filename.startswith(project) and "/.venv/" not in filename:
                callers.append(caller.f_code.co_qualname)
            caller = caller.f_back
        if caller is not None:
            paths[" -> ".join(["Workspace.run", *reversed(callers), "step"])] = len(callers) + 1

    sys.setprofile(trace)
    try:
        workspace.run()
    finally:
        sys.setprofile(None)
    return paths


@pytest.mark.slow
def test_every_optimiser_step_is_at_most_four_calls_below_workspace_run(tmp_path: Path) -> None:
    """A real tiny run traced with sys.setprofile: for every Adam step (SAC's critic, actor and temperature, and
    the reward model's), the project functions between `Workspace.run` and the step are counted, the step's own
    call included. `run -> update_agent -> SACAgent.update -> step` is 3 calls; torch's wrappers around `step`
    and its decorators are not the project's code and are not counted."""
    cfg = load_config("env=walker_walk", "device=cpu", "num_threads=1", "num_train_steps=1400", "num_seed_steps=300",
                      "num_unsup_steps=800", "num_interact=200", "max_feedback=20", "reward_batch=10", "segment=20",
                      "reward_update=10", "reset_update=5", "eval_frequency=100000", "agent.params.batch_size=32",
                      *SMALL_NETWORKS)  # fmt: skip
    workspace = train_QPA.Workspace(cfg, tmp_path)
    paths = optimiser_step_paths(workspace)
    assert {
        "Workspace.run -> Workspace.update_agent -> SACAgent.update_state_ent -> SACAgent.update -> step",
        "Workspace.run -> Workspace.feedback -> train_reward -> RewardTrainer.fit -> step",
        "Workspace.run -> Workspace.feedback -> reset_critic_after_first_round -> SACAgent.update -> step",
        "Workspace.run -> Workspace.update_agent -> SACAgent.update -> step",
    } == set(paths), paths
    assert max(paths.values()) <= MAX_CALLS_TO_AN_OPTIMISER_STEP
