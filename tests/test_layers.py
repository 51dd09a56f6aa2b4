"""Imports only run down the layers of docs/architecture.md, and never in a cycle.

Read from the source with `ast`, imports inside functions included: a lazy import that runs
back up is still a dependency on the layer above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Lowest first; a module belongs to the layer of its longest matching prefix (a module, or a
# package and everything in it). The package root itself is the public API, above everything
# it re-exports; it is no prefix, so every new module must be placed here.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "blazerpc._version",
            "blazerpc.exceptions",
            "blazerpc.types",
            "blazerpc.injection",
            "blazerpc.runtime.registry",
            "blazerpc.balancing",
        ),
    ),
    ("values", ("blazerpc.convert", "blazerpc.codec", "blazerpc.schema")),
    ("runtime", ("blazerpc.runtime",)),
    ("client", ("blazerpc.client", "blazerpc.client_jsonrpc")),
    (
        "calls",
        ("blazerpc.server.middleware", "blazerpc.server.metrics", "blazerpc.policy"),
    ),
    ("pipeline", ("blazerpc.pipeline",)),
    (
        "transports",
        (
            "blazerpc.protocols",
            "blazerpc.server.handlers",
            "blazerpc.server.streams",
            "blazerpc.server.health",
            "blazerpc.server.reflection",
        ),
    ),
    ("server", ("blazerpc.server.server",)),
    ("app", ("blazerpc.app",)),
    ("launch", ("blazerpc.launch", "blazerpc.server.workers")),
    ("cli", ("blazerpc.cli", "blazerpc.contrib", "blazerpc.deploy")),
    ("public API", ("blazerpc",)),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "blazerpc").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def layer_of(module: str) -> int:
    best, level = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module.startswith(prefix + ".") and prefix != "blazerpc"
            if (module == prefix or inside) and len(prefix) > best:
                best, level = len(prefix), index
    return level


def imports_of(module: str) -> set[str]:
    """The package's own modules that `module` imports, resolved to module names."""
    package = module if _is_package(module) else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    # A package's __init__ that only has a docstring imports nothing; skip those packages.
    return {
        name
        for name in found
        if name in MODULES and name != module and (not _is_package(name) or name == "blazerpc")
    }


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_has_a_layer() -> None:
    # Subpackages only hold a docstring; one that starts importing is caught below.
    modules = [m for m in MODULES if m == "blazerpc" or not _is_package(m)]
    unplaced = sorted(m for m in modules if layer_of(m) < 0)
    assert unplaced == [], f"add these modules to a layer in LAYERS: {unplaced}"


def test_imports_only_run_down() -> None:
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in sorted(GRAPH.items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_no_import_cycles() -> None:
    cycles, state = [], dict.fromkeys(GRAPH, 0)  # 0 unseen, 1 on the path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state[target] == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif state[target] == 0:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if state[module] == 0:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from ..cli import load_app", "blazerpc.cli"),
        ("from ... import __version__", "blazerpc"),
        ("from ..protocols.kserve import messages", "blazerpc.protocols.kserve.messages"),
    ],
)
def test_the_checker_sees_relative_imports(
    source: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check itself: a relative import that runs up is found, not silently resolved away."""
    module = "blazerpc.protocols.kserve.probe" if "..." in source else "blazerpc.server.probe"
    probe = tmp_path / "probe.py"
    probe.write_text(source + "\n")
    monkeypatch.setitem(MODULES, module, probe)
    assert expected in imports_of(module)
