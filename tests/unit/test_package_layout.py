"""The package's layout holds its architecture: layers, no cycles, a pure core, small modules.

Every ``import`` in ``lczscale/`` (also those inside functions: an import moved into a function
still ties two modules) is resolved to the module it loads and checked against the layers of
``docs/architecture.md``, lowest first. A module may import its own layer or a lower one, never
a higher one, and no group of modules may import each other in a loop.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lczscale"

# Lowest first; a module belongs to the longest prefix that names it.
LAYERS: list[tuple[str, ...]] = [
    ("lczscale.errors", "lczscale.classes", "lczscale.version", "lczscale.lazy_exports"),
    ("lczscale.core", "lczscale.products"),
    ("lczscale.config",),
    ("lczscale.io",),  # the plumbing: stores, retries, zarr calls, shards, paths
    ("lczscale.io.sources", "lczscale.io.cube"),
    ("lczscale.io.labels",),
    ("lczscale.model",),
    ("lczscale.infer",),
    ("lczscale.train",),
    ("lczscale.planning",),
    ("lczscale.execute.clusters",),
    ("lczscale.execute",),
    ("lczscale.browse", "lczscale.synth"),
    ("lczscale.studies",),
    ("lczscale.cli",),
]
FACE = "lczscale"  # the root package: what a user imports first, may reach anything
CORE_MUST_NOT_LOAD = ("torch", "dask", "distributed", "fsspec", "zarr", "xarray", "pydantic")
MAX_ROOT_MODULES = 10
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str:
    """The module an import of ``name`` loads: the longest prefix that is a module here."""
    parts = name.split(".")
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts)


def imports_of(module: str) -> set[str]:
    """Every lczscale module ``module`` imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {resolve(a.name) for a in node.names if a.name.startswith("lczscale")}
        elif (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
              and node.module.startswith("lczscale")):
            # ``from pkg import sub`` loads pkg.sub when sub is a module
            found |= {resolve(f"{node.module}.{a.name}") for a in node.names}
    return found - {module, ""}


GRAPH = {m: imports_of(m) for m in MODULES}


def layer_of(module: str) -> int:
    best, layer = "", -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, layer = prefix, i
    return layer


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in MODULES if m != FACE and layer_of(m) < 0]
    assert not unplaced, f"modules in no layer (add them to LAYERS and the doc): {unplaced}"


def test_no_import_runs_up_a_layer() -> None:
    backward = [
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in GRAPH.items() if m != FACE
        for t in sorted(targets) if t == FACE or layer_of(t) > layer_of(m)
    ]
    assert not backward, "imports against the layers:\n" + "\n".join(backward)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert not cycles(GRAPH), f"modules that import each other in a loop: {cycles(GRAPH)}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_core_loads_no_heavy_library() -> None:
    """``lczscale.core`` needs numpy and odc-geo only. odc-geo itself loads dask where it is
    installed, so what counts is what importing the core adds to importing those two."""
    probe = (
        "import sys\n"
        "import numpy, odc.geo.geobox, odc.geo.geom, pyproj, affine, shapely\n"
        "before = set(sys.modules)\n"
        "import lczscale.core\n"
        f"heavy = {CORE_MUST_NOT_LOAD!r}\n"
        "added = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(added & set(heavy)))\n"
        "print(sorted(m for m in heavy if m in sys.modules and m != 'dask'))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parent).stdout.splitlines()
    assert out == ["[]", "[]"], f"importing lczscale.core loaded {out}"


def test_root_holds_few_modules_and_no_module_is_long() -> None:
    root = [p.name for p in PACKAGE.glob("*.py")]
    assert len(root) <= MAX_ROOT_MODULES, f"{len(root)} modules at the root: {sorted(root)}"
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_names_in_one_folder_differ_by_more_than_a_plural_or_a_suffix() -> None:
    by_folder: dict[Path, list[str]] = defaultdict(list)
    for p in PACKAGE.rglob("*.py"):
        if p.stem != "__init__":
            by_folder[p.parent].append(p.stem)
    for p in PACKAGE.rglob("*/"):
        if (p / "__init__.py").exists():
            by_folder[p.parent].append(p.name)  # a subpackage is a name in its folder too
    clashes = [
        f"{folder.relative_to(PACKAGE.parent)}: {a} / {b}"
        for folder, names in by_folder.items() for a in names for b in names
        if a != b and (a == b + "s" or a.startswith(b + "_"))
    ]
    assert not clashes, f"names that differ only by a plural or a suffix: {clashes}"


def third_party(module: str) -> set[str]:
    tops: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            tops |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            tops.add(node.module.split(".")[0])
    return tops - {"lczscale", "__future__"}


def test_no_module_is_named_after_the_library_it_wraps() -> None:
    named = [m for m in MODULES if m.rsplit(".", 1)[-1] in third_party(m)]
    assert not named, f"modules named like a library they import: {named}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if MODULES[m].name == "__init__.py"))
def test_each_package_declares_its_public_names(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text())
    assert ast.get_docstring(tree), f"{module} says nothing of what it holds"
    names = [n.id for node in tree.body if isinstance(node, ast.Assign)
             for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    assert "__all__" in names, f"{module} has no __all__"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if MODULES[m].name == "__init__.py"))
def test_every_public_name_a_package_declares_resolves(module: str) -> None:
    package = importlib.import_module(module)
    missing = [n for n in package.__all__ if not hasattr(package, n)]
    assert not missing, f"{module}.__all__ names what it does not have: {missing}"
