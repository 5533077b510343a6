"""The package's rooms, read from its source: each room imports only from the rooms below it,
no module imports itself back through others, and no function grows past what one reads at once."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "mnist_search"
# Bottom to top: a module may import from its own room and the rooms before it, never after.
ROOMS = ("core", "speed", "training", "search", "tracking", "workflows", "")  # "": cli.py, progress.py
MAX_FUNCTION_LINES = 80
MAX_CLI_LINES = 450


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }


def _imports(path: Path) -> set[str]:
    """Every mnist_search module the file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnist_search"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mnist_search")}
    return found


def _room(module: str) -> str:
    """mnist_search.ROOM[.module] -> ROOM; the top-level modules (cli, progress) -> ""."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else ""


def test_each_room_imports_only_from_the_rooms_below_it():
    wrong = []
    for module, path in _modules().items():
        here = ROOMS.index(_room(module))
        for target in _imports(path):
            if target in ("mnist_search.experiments",):
                continue
            if ROOMS.index(_room(target)) > here:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_tracking_imports_nothing_from_training_or_speed():
    tracking = {m: p for m, p in _modules().items() if _room(m) == "tracking"}
    assert len(tracking) >= 4
    reach = {t for p in tracking.values() for t in _imports(p) if _room(t) in ("training", "speed")}
    assert reach == set()


def test_no_module_imports_itself_back():
    graph = {m: {t for t in _imports(p) if t != m} for m, p in _modules().items()}
    cycles, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert len(graph) > 30
    assert cycles == []


def test_no_function_is_longer_than_one_reads_at_once():
    long = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert long == []


def test_the_command_line_module_stays_thin():
    assert len((PACKAGE / "cli.py").read_text().splitlines()) <= MAX_CLI_LINES
