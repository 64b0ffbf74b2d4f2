"""The stages import one way (README's stage table): an AST scan of every import in `rnnc/`,
those inside functions and under TYPE_CHECKING included, fails on any cycle between modules or
between stages, and on any import of a later stage by an earlier one."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "rnnc"
# earliest first: a stage may import only stages before it (and itself)
STAGES = ["errors", "records", "stats", "host", "progress", "graphs", "compiler", "targets", "verify",
          "pipeline", "bench", "history", "reports", "api", "rnnc", "cli", "__main__"]


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = ("rnnc",) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the rnnc modules it imports (a `from pkg import name` of a submodule is that module)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `import rnnc.a.b` of a name inside rnnc.a
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "rnnc"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_cycle_between_modules():
    assert cycles(import_graph()) == []


def test_no_cycle_between_stages():
    graph: dict[str, set[str]] = {}
    for module, edges in import_graph().items():
        graph.setdefault(stage(module), set()).update(stage(e) for e in edges if stage(e) != stage(module))
    assert cycles(graph) == []


def test_every_module_is_in_a_known_stage():
    assert sorted({stage(m) for m in import_graph()} - set(STAGES)) == []


def test_stages_import_only_earlier_stages():
    rank = {s: i for i, s in enumerate(STAGES)}
    backwards = sorted(f"{m} imports {e}" for m, edges in import_graph().items() for e in edges
                       if rank.get(stage(e), -1) > rank.get(stage(m), -1))
    assert backwards == []


def test_the_scan_sees_imports_inside_functions(tmp_path):
    """The scanner itself can fail: a cycle through a function-level import is found."""
    graph = {"rnnc.a": {"rnnc.b"}, "rnnc.b": {"rnnc.a"}, "rnnc.c": {"rnnc.a"}}
    assert cycles(graph) == [["rnnc.a", "rnnc.b"]]
    edges = import_graph()
    assert "rnnc.api" in edges["rnnc"]  # rnnc/__init__ imports the API inside its functions only
