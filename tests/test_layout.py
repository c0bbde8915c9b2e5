"""The package's shape: what ``import rnnc`` loads, and no import cycles among rnnc's
modules, lazy imports (inside functions) included."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

from tests.conftest import ROOT

PACKAGES = {"rnnc": ROOT / "rnnc", "rnnc.backends": ROOT / "backends"}
PACKAGES |= {
    f"rnnc.{group}": ROOT / "rnnc" / group for group in ("front", "ir", "runtime", "tools")
}


def test_import_rnnc_loads_neither_graphviz_nor_torch() -> None:
    code = (
        "import sys, rnnc; rnnc.load_spec; rnnc.compile; "
        "print(sorted(m for m in ('graphviz', 'torch', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_backends_install_inside_rnnc() -> None:
    import importlib.util

    import rnnc.backends.numpy_backend

    assert Path(rnnc.backends.numpy_backend.__file__).parent == ROOT / "backends"
    spec = importlib.util.find_spec("backends")
    assert spec is None or Path(spec.origin or "").parent == ROOT / "backends"  # the checkout


def module_graph() -> nx.DiGraph:
    """Module -> the modules it imports anywhere in its source (rnnc's own only)."""
    files = {
        (package if path.stem == "__init__" else f"{package}.{path.stem}"): path
        for package, folder in PACKAGES.items()
        for path in folder.glob("*.py")
    }
    graph = nx.DiGraph()
    for name, path in files.items():
        graph.add_node(name)
        package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                    for alias in node.names
                ]
            else:
                continue
            graph.add_edges_from((name, t) for t in targets if t in files and t != name)
    return graph


def test_no_import_cycles() -> None:
    graph = module_graph()
    assert graph.number_of_edges() > 50  # the graph was read, not empty
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert cycles == []


def test_backends_and_their_models_follow_the_protocols() -> None:
    import rnnc
    from rnnc.runtime.compiled import Backend, CompiledModel
    from rnnc.runtime.registry import available_backends, load_backend

    spec = rnnc.load_spec(ROOT / "specs" / "elman_rnn.yaml")
    for name in available_backends():
        backend = load_backend(name)
        assert isinstance(backend, Backend) and backend.name == name
        assert isinstance(rnnc.compile(spec, backend=name), CompiledModel)


# What each part of rnnc may import: the pipeline's order (front end, IR and lowering,
# runtime, tools), never back up it. rnnc.errors and rnnc.version sit below them all.
LAYERS = ("front", "ir", "runtime", "tools")


def test_the_parts_import_only_what_comes_before_them() -> None:
    def layer(module: str) -> int:
        parts = module.split(".")
        if parts[1:2] == ["backends"]:
            return LAYERS.index(
                "runtime"
            )  # backends: the IR rendered, behind the runtime's protocols
        return LAYERS.index(parts[1]) if len(parts) > 2 and parts[1] in LAYERS else -1

    upward = [(u, v) for u, v in module_graph().edges if layer(v) > layer(u) >= 0]
    assert upward == []
