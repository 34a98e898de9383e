"""The package's import graph has no cycles, and the subpackages keep the floors their __init__ docstrings state.

The graph is read from the source with `ast`, not by importing: every `import` and `from ... import`
statement of jax_ddpm, ddpm_harness, torch_reference and benchmarks, at module level or inside a function
(a lazy import still makes a cycle, only a later one). Relative imports are resolved; importing a package
counts as importing its __init__, and `from package import name` as importing the submodule `name` when
there is one (else the package's __init__).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("jax_ddpm", "ddpm_harness", "torch_reference", "benchmarks")
COMMAND_LINES = tuple(f"jax_ddpm.{name}" for name in ("train", "sample", "evaluate", "convert", "sweep"))


def module_name(path: Path) -> str:
    """'jax_ddpm.runner.chunk' for jax_ddpm/runner/chunk.py, 'jax_ddpm.runner' for its __init__.py."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    """Every module of PACKAGES by its dotted name."""
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def imported_names(path: Path, name: str) -> set[str]:
    """The absolute dotted names a module's import statements name (functions' bodies included): for
    `from a.b import c`, both 'a.b' and 'a.b.c' (the caller keeps the ones that are modules)."""
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per dot past the first
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports. Importing a.b.c also imports a and a.b (their
    __init__ run first), so each prefix that is a module counts as an edge too."""
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for imported in imported_names(path, name):
            parts = imported.split(".")
            edges.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if p in modules)
        edges.discard(name)
        # A module's own packages are imported before it runs: not an edge it adds (and not a cycle).
        graph[name] = {e for e in edges if not name.startswith(e + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [m0, m1, ..., m0], or None (depth-first search, three colours)."""
    colour, stack = dict.fromkeys(graph, 0), []

    def visit(node):
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if colour[nxt] == 0 and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if colour[node] == 0 and (cycle := visit(node)):
            return cycle
    return None


def importers(graph, target_prefixes) -> dict[str, set[str]]:
    """module -> the modules under any of target_prefixes that it imports."""
    out = {}
    for module, edges in graph.items():
        hit = {e for e in edges if any(e == p or e.startswith(p + ".") for p in target_prefixes)}
        if hit:
            out[module] = hit
    return out


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_finds_a_lazy_cycle():
    """The detector itself: a cycle closed by a function-level import is reported."""
    graph = import_graph()
    graph["jax_ddpm.schedule"] = graph["jax_ddpm.schedule"] | {"jax_ddpm.runner.chunk"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]


def test_imported_names_reads_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "jax_ddpm" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    module = pkg / "mod.py"
    module.write_text("from . import sibling\nfrom ..twin import f\n\ndef g():\n    import jax_ddpm.lazy\n")
    names = imported_names(module, "jax_ddpm.sub.mod")
    assert {"jax_ddpm.sub", "jax_ddpm.sub.sibling", "jax_ddpm.twin", "jax_ddpm.twin.f", "jax_ddpm.lazy"} <= names


@pytest.mark.parametrize(
    "package, forbidden",
    [
        # jax_ddpm/objectives/__init__.py: never imports `samplers`, `runner` or a command line.
        ("jax_ddpm.objectives", ("jax_ddpm.samplers", "jax_ddpm.runner", *COMMAND_LINES)),
        # jax_ddpm/samplers/__init__.py: never imports `runner` or a command line.
        ("jax_ddpm.samplers", ("jax_ddpm.runner", *COMMAND_LINES)),
        # jax_ddpm/runner/__init__.py: the command lines import it; it never imports them.
        ("jax_ddpm.runner", COMMAND_LINES),
    ],
)
def test_subpackage_floors(package, forbidden):
    graph = import_graph()
    violations = {}
    for module, hit in importers(graph, forbidden).items():
        unexpected = sorted(h for h in hit if not known_exception(module, h))
        if in_package(module, package) and unexpected:
            violations[module] = unexpected
    assert not violations, f"{package} imports above its floor: {violations}"


def test_no_module_imports_a_command_line_but_the_command_lines():
    """train/sample/evaluate/convert/sweep are entry points: nothing else in the package imports them."""
    graph = import_graph()
    violations = {
        module: sorted(hit)
        for module, hit in importers(graph, COMMAND_LINES).items()
        if module not in COMMAND_LINES and in_package(module, "jax_ddpm")
    }
    assert not violations, f"modules importing a command line: {violations}"


# (module, what it imports above its floor) -> the reason it is tolerated for now. Importing a submodule
# also imports its package: an exception for a.b.c covers the edge to a.b.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def known_exception(module: str, imported: str) -> bool:
    return any(m == module and (t == imported or t.startswith(imported + ".")) for m, t in KNOWN_EXCEPTIONS)
