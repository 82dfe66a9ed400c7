"""The package's layering: imports only point down, and no module imports itself
back through others.

Layers, lowest first: core, data, features, models, tracking, training, inference,
serving, then the entry layer (cli, sweeps). A module may import from its own
layer and the layers below it (CONTRIBUTING.md says why and how to add a module).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Set

from helpers import REPO

PACKAGE = REPO / "src" / "modelsphere"
LAYERS = (
    "core",
    "data",
    "features",
    "models",
    "tracking",
    "training",
    "inference",
    "serving",
)
ENTRY_LAYER = len(LAYERS)  # cli.py, sweeps.py and the package root


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> Set[str]:
    """Every modelsphere module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; use modelsphere.<layer>")
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] == "modelsphere":
                found.add(node.module)
                for alias in node.names:  # `from modelsphere.x import module`
                    found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("modelsphere")}
    return found


def import_graph() -> Dict[str, Set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in imports_of(path) if m in paths and m != name}
        for name, path in paths.items()
    }


def layer(module: str) -> int:
    if module == "modelsphere":  # the package root holds only __version__
        return 0
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return ENTRY_LAYER


def test_every_import_points_down_the_layers():
    upward = [
        f"{module} ({LAYERS[layer(module)]}) imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if layer(target) > layer(module) and layer(module) < ENTRY_LAYER
    ]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_no_import_circles():
    graph = import_graph()
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(module: str, path: list) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_every_layer_is_a_package_with_a_docstring():
    for name in LAYERS:
        init = PACKAGE / name / "__init__.py"
        assert init.is_file(), name
        assert ast.get_docstring(ast.parse(init.read_text())), name


def test_contributing_names_real_files():
    """Every module and test CONTRIBUTING.md sends a contributor to exists."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    named = set(re.findall(r"`((?:tests/)?[\w/]+\.py)`", text))
    missing = [
        name
        for name in named
        if not any((root / name).is_file() for root in (REPO, PACKAGE, PACKAGE.parent))
    ]
    assert named and not missing, missing


def test_every_test_lives_in_a_tier_and_carries_its_marker(request):
    """`make test-quick` selects `-m unit`: each test file sits in a tier folder,
    and the conftest hook marks its tests with that tier."""
    tests = REPO / "tests"
    loose = [p.name for p in tests.glob("test_*.py")]
    assert not loose, f"test files outside tests/unit|pipeline|tooling: {loose}"
    assert request.node.get_closest_marker("unit") is not None
