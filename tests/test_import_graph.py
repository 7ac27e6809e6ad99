"""The import graph of ``rlver_agents`` and ``training``: no cycles, and the layers hold.

Read statically from each module's imports, function-local ones included (only those under
``if TYPE_CHECKING:`` are left out), so a cycle shows up even where a function-local import
lets today's import order survive it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rlver_agents", "training")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found[_module_name(path)] = path
    return found


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, function-local ones included (a function-local import that
    dodges a cycle is still a dependency), except those under ``if TYPE_CHECKING:``."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for child in ast.walk(node)}
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in skipped
    ]


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports when it is imported."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
                    break
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 40
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_rlver_agents_never_imports_training() -> None:
    graph = import_graph()
    upward = {
        (name, target)
        for name, targets in graph.items()
        if name.startswith("rlver_agents")
        for target in targets
        if target.startswith("training")
    }
    assert not upward


def test_reading_every_shipped_training_configuration_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from training.config import load_train_config\n"
        "paths = sorted(Path('training/configs').glob('*.yaml'))\n"
        "assert paths\n"
        "for path in paths:\n"
        "    load_train_config(path)\n"
        "heavy = sorted({'torch', 'transformers', 'accelerate', 'trl'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
        "print(len(paths))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 2


# rlver_agents' subpackages by floor: each imports only lower floors (and the flat modules at
# the top of the package, the lowest floor). models/ and testing/ sit beside the roles.
_FLOORS = {"appraisers": 1, "agents": 2, "episodes": 3, "evaluation": 4}


def test_the_role_subpackages_only_import_downwards() -> None:
    graph = import_graph()

    def floor(module: str) -> int | None:
        parts = module.split(".")
        return _FLOORS.get(parts[1]) if len(parts) >= 2 else None

    upward = {
        (name, target)
        for name, targets in graph.items()
        if name.startswith("rlver_agents.") and (here := floor(name)) is not None
        for target in targets
        if (there := floor(target)) is not None and there > here
    }
    assert not upward
    flat_floor = {"emotion", "personas", "thinking", "repetition", "prompts", "jsonl", "errors"}
    flat_floor |= {"seeds", "_version"}
    reaching_up = {
        (name, target)
        for name, targets in graph.items()
        if name.split(".")[-1] in flat_floor and name.count(".") == 1
        for target in targets
        if floor(target) is not None or target.split(".")[1:2] == ["models"]
    }
    assert not reaching_up
