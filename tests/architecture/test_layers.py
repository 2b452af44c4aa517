"""The layer contract, read from the source (every import, in functions included):

* core → nothing of ours; classifiers → nothing of ours; workers ↛ service;
* no import cycle between our modules, however the imports are hidden;
* the routes reach workers/ only to check a request against the registry, to submit, and to serve.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGES = ("core", "classifiers", "workers", "service")
FORBIDDEN = {
    "core": {"classifiers", "workers", "service"},
    "classifiers": {"core", "workers", "service"},
    "workers": {"service"},
    "service": set(),
}
ROUTES_MAY_USE = {
    "workers.plan",
    "workers.dispatch",
    "workers.backbones",
    "workers.runtime.serving",
    "workers.runtime.export",  # a model as one ONNX graph, built from stored artifacts
    "workers.runtime.similarity",  # nearest images in a feature set
    "workers.runtime.suggestions",  # unlabelled images to label next, ranked on cached features
    "workers.runtime.inference",
    "workers.ingest",  # uploads are checked in the API before they are stored
    "workers.reaper",  # with memory:// jobs, and so their reaper, run in the API process
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                found[_module_name(path)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of ours an import names (``from workers.jobs import fit`` → ``workers.jobs.fit``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    out: set[str] = set()
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import sub`` imports the submodule; ``from pkg import name`` imports pkg itself
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                out.add(target)
    return out


GRAPH = {module: _imports(module) for module in MODULES}


def test_the_tree_is_found() -> None:
    assert {"core.jobs", "service.app", "workers.runner", "classifiers.heads"} <= set(MODULES)


@pytest.mark.parametrize("package", PACKAGES)
def test_layers(package: str) -> None:
    bad = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] in FORBIDDEN[package]
    )
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components: any component of more than one module is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
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
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert not cycles, cycles


def test_routes_use_workers_only_to_check_submit_and_serve() -> None:
    bad = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.startswith(("service.routes.", "service.app", "service.uploads", "service.deps"))
        for target in targets
        if target.startswith("workers.") and not any(target.startswith(ok) for ok in ROUTES_MAY_USE)
    )
    assert not bad, "\n".join(bad)
