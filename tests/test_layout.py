"""The tree reads like the data path, and no module imports itself back.

Every import counts: at module level, inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("seetalk", "voice", "vision", "conversation", "llm", "models", "server")

# server/ is the transports' room: HTTP, WebRTC, the WebSocket API, codecs, auth and limits.
SERVER_MODULES = {
    "server",
    "server.admission",
    "server.app",
    "server.auth",
    "server.metrics",
    "server.ratelimit",
    "server.realtime_codec",
    "server.realtime_ws",
    "server.sdp",
    "server.tracks",
    "server.webrtc",
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports (``from pkg import mod`` names the module)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
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


def _parent_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Importing ``a.b`` runs ``a/__init__.py`` first: count that as an edge too."""
    out = {k: set(v) for k, v in graph.items()}
    for deps in out.values():
        for dep in list(deps):
            parent = dep.rpartition(".")[0]
            if parent in graph:
                deps.add(parent)
    return out


def test_no_import_cycles() -> None:
    graph = _parent_edges(_graph())
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_server_holds_only_transports() -> None:
    server = {name for name in _modules() if name == "server" or name.startswith("server.")}
    assert server <= SERVER_MODULES, f"not a transport: {sorted(server - SERVER_MODULES)}"


def test_the_engine_does_not_reach_into_transports() -> None:
    """Media in (server) -> voice -> conversation -> vision, llm -> voice -> media out: the
    stages below the transports never import them."""
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith(("voice", "vision", "llm", "models", "conversation")):
            assert not {d for d in deps if d.split(".")[0] == "server"}, name
        if name.startswith(("voice", "vision", "llm")):  # the stages: only seetalk below
            top = name.split(".")[0]
            assert {d.split(".")[0] for d in deps} <= {top, "seetalk"}, (name, deps)
