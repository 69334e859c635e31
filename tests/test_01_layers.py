"""The house's layers: no import circle, no import from a lower layer to a higher one.

The source of ``src/dicomxr`` is read with :mod:`ast` (nothing is imported). Every import
counts: at module level, inside functions, under ``TYPE_CHECKING``, and the ``"module"`` /
``"module:attribute"`` strings the lazy-name tables hand to :mod:`importlib`. The layer table
below is the drawing in ``docs/dev/architecture.md``; a new module gets a row in both. A
module takes no other module's private names (imported or looked up as attributes), and the
core modules keep their functions small.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "dicomxr"

#: bottom to top; a module may import its own layer (without a circle) and the layers below.
#: A name ending in ".*" stands for a subpackage: its face (``__init__``) and every module in it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "dicomxr._version",
            "dicomxr.errors",
            "dicomxr.options",
            "dicomxr._lazy",
            "dicomxr._files",
            "dicomxr.data",
            "dicomxr.attrs",
            "dicomxr.phantom",
            "dicomxr._data",
        ),
    ),
    (
        "file reading",
        (
            "dicomxr.sources",
            "dicomxr._header",
            "dicomxr._keys",
            "dicomxr._functional_groups",
            "dicomxr._catalog_cache",
            "dicomxr.dicomdir",
            "dicomxr.scaling",
            "dicomxr.pixels",
        ),
    ),
    ("catalog", ("dicomxr.catalog",)),
    ("frames", ("dicomxr.frames", "dicomxr.mosaic")),
    ("geometry", ("dicomxr.geometry", "dicomxr.spatial", "dicomxr.intensity")),
    ("series plan", ("dicomxr.series", "dicomxr.runs")),
    ("lazy array", ("dicomxr._array",)),
    ("xarray", ("dicomxr.api", "dicomxr.backend")),
    ("transforms", ("dicomxr.orientation", "dicomxr.resample")),
    (
        "consumers",
        (
            "dicomxr.labels",
            "dicomxr.export.*",
            "dicomxr.viewer.*",
            "dicomxr.net.*",
            "dicomxr.teaching.*",
            "dicomxr.explain",
            "dicomxr.ml.*",
        ),
    ),
    ("accessor", ("dicomxr.accessor",)),
    ("workflows", ("dicomxr.conversion",)),
    (
        "entry points",
        (
            "dicomxr",
            "dicomxr.__main__",
            "dicomxr.cli",
            "dicomxr._cli_common",
            "dicomxr._cli_io",
            "dicomxr._cli_convert",
            "dicomxr.net.cli",
            "dicomxr.teaching.cli",
        ),
    ),
]


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package by its ``__init__``)."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _layer_of(module: str) -> tuple[int, str] | None:
    """The layer a module is on: an exact name wins over a subpackage's ``.*``."""
    for exact in (True, False):
        for rank, (layer, names) in enumerate(LAYERS):
            for name in names:
                if exact and name == module:
                    return rank, layer
                if not exact and name.endswith(".*"):
                    base = name[:-2]
                    if module == base or module.startswith(base + "."):
                        return rank, layer
    return None


def _import_base(node: ast.ImportFrom, package: str) -> str:
    """The absolute module a ``from ... import`` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join([*anchor, *([node.module] if node.module else [])])


def _imports(module: str, path: Path, modules: dict[str, Path]) -> dict[str, list[int]]:
    """The dicomxr modules ``module`` imports, with the lines where it does."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, list[int]] = {}

    def add(target: str, line: int) -> None:
        if target in modules and target != module:
            found.setdefault(target, []).append(line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _import_base(node, package)
            for alias in node.names:
                # ``from dicomxr import intensity`` imports the submodule, not the face
                sub = f"{base}.{alias.name}"
                add(sub if sub in modules else base, node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # lazy-name tables: "dicomxr.viewer._viewer:view" goes to importlib
            name = node.value.partition(":")[0]
            if name.startswith(PACKAGE + ".") and name in modules:
                add(name, node.lineno)
    return found


def _graph() -> dict[str, dict[str, list[int]]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _circles(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    missing = [m for m in _modules() if _layer_of(m) is None]
    assert not missing, (
        f"modules on no layer: {missing}; add each to LAYERS in {Path(__file__).name} and to "
        "the drawing in docs/dev/architecture.md"
    )


def test_no_import_circle():
    circles = _circles(_graph())
    assert not circles, "import circles among dicomxr modules: " + "; ".join(
        " <-> ".join(c) for c in circles
    )


def test_imports_run_downward_only():
    upward = []
    for module, targets in _graph().items():
        here = _layer_of(module)
        for target, lines in targets.items():
            there = _layer_of(target)
            if here and there and there[0] > here[0]:
                upward.append(
                    f"{module} ({here[1]}) imports {target} ({there[1]}) at line(s) {lines}"
                )
    assert not upward, (
        "imports from a lower layer to a higher one (move the shared helper down instead):\n"
        + "\n".join(upward)
    )


def test_no_private_names_across_modules():
    # a module's ``_name`` is its own: another module takes a public helper instead
    modules = _modules()
    taken = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            if node.module not in modules or node.module == module:
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and f"{node.module}.{alias.name}" not in modules:
                    taken.append(f"{module} takes {node.module}.{alias.name} (line {node.lineno})")
    assert not taken, "private names used across modules:\n" + "\n".join(taken)


@pytest.mark.parametrize("name", [n for _, names in LAYERS for n in names])
def test_layer_table_names_real_modules(name):
    modules = _modules()
    base = name[:-2] if name.endswith(".*") else name
    assert base in modules, f"{name} in LAYERS is no module of {PACKAGE}"


def _module_names(module: str, tree: ast.AST, modules: dict[str, Path]) -> dict[str, str]:
    """Local names bound to dicomxr modules: ``from dicomxr import pixels``, ``import x as y``,
    and the dotted ``dicomxr.pixels`` an ``import dicomxr.pixels`` makes usable."""
    package = module if modules[module].name == "__init__.py" else module.rpartition(".")[0]
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    bound[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _import_base(node, package)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    return bound


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` of a chain of attribute look-ups on a name, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def test_no_private_attributes_across_modules():
    # ``pixels._replace`` after ``from dicomxr import pixels`` is the same breach as
    # ``from dicomxr.pixels import _replace``: take (or make) a public helper instead
    modules = _modules()
    taken = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bound = _module_names(module, tree, modules)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            owner = bound.get(_dotted(node.value) or "")
            if private and owner and owner != module and f"{owner}.{node.attr}" not in modules:
                taken.append(f"{module} takes {owner}.{node.attr} (line {node.lineno})")
    assert not taken, "private names used across modules:\n" + "\n".join(taken)


#: the loader's core (catalog -> plan -> lazy array -> xarray -> accessor): small functions
CORE_MODULES = (
    "dicomxr.catalog",
    "dicomxr.frames",
    "dicomxr.series",
    "dicomxr.pixels",
    "dicomxr._array",
    "dicomxr.api",
    "dicomxr.backend",
    "dicomxr.accessor",
)
MAX_FUNCTION_LINES = 120


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_functions_are_small(module):
    path = _modules()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = [
        f"{node.name} (line {node.lineno}): {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, (
        f"{module}: functions over {MAX_FUNCTION_LINES} lines (docstring included):\n"
        + ("\n".join(long))
    )
