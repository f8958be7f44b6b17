"""The house holds its shape: the import graph read from the source (docs/architecture.md draws it).

Every import counts, at module level or inside a function (a lazy import is still an arrow); only
imports under `if TYPE_CHECKING:` are left out, since they never run. The rules:
- packages import one way: cli -> (web, worker) -> (model, db, interop) -> common;
- no module reaches itself through its imports (no cycle, however long);
- inside model/ the rooms import downwards only (imaging, network, metrics at the bottom; training at the top);
- every module stays under 450 lines.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("cli", "common", "web", "worker", "interop", "model", "db")
# What each package may import besides itself (DESIGN: model, db and interop never import each other).
ALLOWED = {
    "common": set(),
    "db": {"common"},
    "model": {"common"},
    "interop": {"common"},
    "worker": {"common", "model", "db", "interop"},
    "web": {"common", "worker", "model", "db", "interop"},
    "cli": {"common", "web", "worker", "model", "db", "interop"},
}
# model/'s rooms by level: a room imports only rooms on a lower level (and model/'s root modules).
ROOM_LEVELS = {
    "": 0,  # model/errors.py, printable.py, defaults.py, assets/
    "assets": 0,
    "imaging": 1, "network": 1, "metrics": 1,
    "inference": 2, "datasets": 2, "figures": 2,
    "training": 3,
}
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for file in sorted((REPO / package).rglob("*.py")):
            parts = file.relative_to(REPO).with_suffix("").parts
            if "versions" in parts:  # alembic's migration scripts are loaded by alembic, not imported
                continue
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


def _runs(tree: ast.AST) -> list[ast.AST]:
    """Every node that can run: all of them but the bodies of `if TYPE_CHECKING:`."""
    out: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)
    return out


def _imports(file: Path, modules: dict[str, Path]) -> set[str]:
    def ours(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    targets: set[str] = set()
    for node in _runs(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            targets.update(t for a in node.names if (t := ours(a.name)))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from model.network import store` imports model.network.store
                submodule = f"{node.module}.{alias.name}"
                target = submodule if submodule in modules else ours(node.module)
                if target:
                    targets.add(target)
    return targets


MODULES = _modules()
GRAPH = {name: _imports(file, MODULES) - {name} for name, file in MODULES.items()}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (REPO / "model" / parts[1]).is_dir()) else ""


def test_the_graph_sees_the_imports() -> None:
    """The reader itself: lazy imports count, TYPE_CHECKING ones do not, `from pkg import module` resolves."""
    assert "model.network.store" in GRAPH["cli.models"]  # inside a function
    assert "model.network.bundle" not in GRAPH["model.network.card"]  # only under TYPE_CHECKING
    assert "model.network.identity" in GRAPH["model.network.bundle"]  # from model.network import identity
    assert len(MODULES) > 80


def test_packages_import_one_way() -> None:
    wrong = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
                   if (pa := a.split(".")[0]) != (pb := b.split(".")[0]) and pb not in ALLOWED[pa])
    assert wrong == [], "imports against the arrows of docs/architecture.md"


def test_no_module_imports_one_that_imports_it_back() -> None:
    cycles = _cycles(GRAPH)
    assert cycles == [], "cycles: " + "; ".join(" -> ".join([*c, c[0]]) for c in cycles)


def test_the_cycle_finder_finds_a_long_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_model_rooms_import_downwards_only() -> None:
    assert {_room(m) for m in MODULES if m.startswith("model.")} <= set(ROOM_LEVELS), "a new room needs a level"
    upward = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() if a.startswith("model.")
                    for b in targets if b.startswith("model.") and _room(a) != _room(b)
                    and ROOM_LEVELS[_room(b)] >= ROOM_LEVELS[_room(a)])
    assert upward == [], "a room may import only rooms below it (docs/architecture.md)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines < MAX_LINES, f"{MODULES[module]} has {lines} lines; split it by concern"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:  # recursion depth is bounded by the module count (~100)
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    edges = defaultdict(set, graph)
    for start in sorted(edges):
        if start not in index:
            visit(start)
    return sorted(found)


SCRIPTS = sorted([*(REPO / "bench").glob("*.py"), *(REPO / "testing").glob("*.py")])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_bench_and_testing_import_nothing_from_tests(script: Path) -> None:
    """Shared helpers live in testing/; bench/ and testing/ never reach into tests/."""
    tree = ast.parse(script.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m == "tests" or m.startswith("tests.")}


@pytest.mark.parametrize("file", sorted([*MODULES.values(), *SCRIPTS]), ids=lambda p: str(p.relative_to(REPO)))
def test_no_code_edits_sys_path(file: Path) -> None:
    """Scripts run as modules from the repository root (`python -m bench.NAME`), never by editing sys.path."""
    assert "sys.path.insert" not in file.read_text() and "sys.path.append" not in file.read_text()


@pytest.mark.parametrize("file", sorted([*MODULES.values(), *SCRIPTS]), ids=lambda p: str(p.relative_to(REPO)))
def test_comments_point_into_the_repository(file: Path) -> None:
    """The rules live in docs/architecture.md, not in documents outside the repository."""
    text = file.read_text()
    assert "DESIGN.md" not in text and "STYLE.md" not in text


def test_the_architecture_page_names_every_package_and_room() -> None:
    page = (REPO / "docs" / "architecture.md").read_text()
    packages = {m.split(".")[0] for m in MODULES}
    rooms = {_room(m) for m in MODULES if m.startswith("model.")} - {"", "assets"}
    missing = sorted(f"{p}/" for p in packages if f"{p}/" not in page)
    missing += sorted(f"`{r}/`" for r in rooms if f"`{r}/`" not in page)
    missing += sorted(f"`{m.rpartition('.')[2]}`" for m in MODULES if m.startswith("model.") and _room(m)
                      not in ("", "assets") and m.count(".") == 2 and f"`{m.rpartition('.')[2]}`" not in page)
    assert missing == [], "docs/architecture.md does not mention these"
