"""The house rules of the source tree: each layer imports only the layers below it, and nothing imports in a circle.

Every module under ``saec/`` is parsed with :mod:`ast` (top-level and
function-level imports alike: a lazy import is a dependency all the same),
mapped to its layer (the package under ``saec/``, or the top-level module)
and checked against :data:`ALLOWED`. The layer order (the architecture's
layering, top to bottom):

    cli, demo, __main__  ->  api  ->  run  ->  analysis  ->  exporters  ->  importers
    ->  training  ->  runtime  ->  targets  ->  compiler  ->  spec  ->  errors

with ``saec.spec`` (the language) imported only by the compiler, the run
layer, the API and the command line. :data:`NEUTRAL` modules sit at the
bottom and may be imported by all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "saec"

_BELOW_TRAINING = {"runtime", "targets", "compiler"}
#: layer -> the layers it may import (besides itself and the NEUTRAL modules); "*" = any.
ALLOWED: dict[str, set[str] | str] = {
    "cli": "*",
    "demo": "*",
    "__main__": "*",
    "api": {"run", "analysis", "exporters", "importers", "training", "runtime", "targets", "compiler", "spec"},
    "run": {"analysis", "exporters", "importers", "training", "runtime", "targets", "compiler", "spec"},
    "analysis": {"importers", "training", *_BELOW_TRAINING},
    "exporters": {"importers", *_BELOW_TRAINING},
    "importers": set(_BELOW_TRAINING),
    "training": set(_BELOW_TRAINING),
    "runtime": {"targets", "compiler"},
    "targets": {"compiler"},
    "compiler": {"spec"},
    "spec": set(),
}
#: Bottom modules any layer may import: the user-error type, the located-YAML reader, the one atomic file
#: writer, the version.
NEUTRAL = {"errors", "yamltext", "atomicwrite", "saec"}

#: Back edges still being removed: (importing layer, imported layer). Must end empty; an entry that no
#: longer occurs fails the test too, so the list can only shrink.
KNOWN_BACK_EDGES: set[tuple[str, str]] = set()
#: Module cycles still being broken, each as the set of its modules; must end empty, and cannot rot either.
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_name(path: Path) -> str:
    """``saec/run/report.py`` -> ``saec.run.report``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_exists(name: str) -> bool:
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _typing_only_lines(tree: ast.AST) -> set[int]:
    """Lines of imports under ``if TYPE_CHECKING:`` (they never run, so they cannot close an import cycle)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                lines |= {n.lineno for stmt in node.body for n in ast.walk(stmt)
                          if isinstance(n, (ast.Import, ast.ImportFrom))}
    return lines


def imported_modules(path: Path, module: str) -> list[tuple[str, int]]:
    """Every saec module ``path`` imports, anywhere in the file, with the line of the import.

    ``from saec.run import artifacts`` names the module ``saec.run.artifacts`` (not the package), so that
    the module graph's cycles are those Python would meet.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "saec"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "saec":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if _module_exists(sub) else base, node.lineno))
    return found


def layer_of(module: str) -> str:
    """The layer a module belongs to: ``saec.run.report`` -> ``run``, ``saec.api`` -> ``api``, ``saec`` -> ``saec``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def import_graph() -> nx.DiGraph:
    """The module graph of ``saec/``: an edge per importing module -> imported module, with where it is.

    Each edge records ``where`` (file:line of every import) and ``runs``: False when every one of them is
    under ``if TYPE_CHECKING:`` (a type annotation's import: a layer rule counts it, a cycle does not).
    """
    graph = nx.DiGraph()
    for path in sorted(SOURCE.rglob("*.py")):
        module = module_name(path)
        graph.add_node(module)
        typing_only = _typing_only_lines(ast.parse(path.read_text(), filename=str(path)))
        for target, line in imported_modules(path, module):
            if target != module:
                where = f"{path.relative_to(REPO)}:{line}"
                if not graph.has_edge(module, target):
                    graph.add_edge(module, target, where=[], runs=False)
                edge = graph.edges[module, target]
                if where not in edge["where"]:
                    edge["where"].append(where)
                edge["runs"] = edge["runs"] or line not in typing_only
    return graph


def layer_violations(graph: nx.DiGraph) -> dict[tuple[str, str], list[str]]:
    """(importing layer, imported layer) -> the file:line of every import the rules forbid."""
    bad: dict[tuple[str, str], list[str]] = {}
    for src, dst, data in graph.edges(data=True):
        a, b = layer_of(src), layer_of(dst)
        if a == b or b in NEUTRAL:
            continue
        allowed = ALLOWED.get(a, set())
        if allowed != "*" and b not in allowed:
            bad.setdefault((a, b), []).extend(f"{w}: {src} -> {dst}" for w in data["where"])
    return bad


def test_every_layer_is_known():
    layers = {layer_of(module_name(p)) for p in SOURCE.rglob("*.py")}
    unknown = layers - set(ALLOWED) - NEUTRAL
    assert not unknown, f"modules outside the layer table (add them to ALLOWED in tests/test_layers.py): {unknown}"


def test_layers_import_only_downward():
    bad = layer_violations(import_graph())
    new = {edge: where for edge, where in bad.items() if edge not in KNOWN_BACK_EDGES}
    assert not new, "imports against the layer order:\n" + "\n".join(
        f"  {a} -> {b}:\n" + "\n".join(f"    {w}" for w in where) for (a, b), where in sorted(new.items()))
    gone = KNOWN_BACK_EDGES - set(bad)
    assert not gone, f"KNOWN_BACK_EDGES lists edges that no longer occur; remove them: {sorted(gone)}"


def test_no_import_cycles():
    graph = import_graph()
    graph.remove_edges_from([(a, b) for a, b, runs in graph.edges(data="runs") if not runs])
    found = sorted(nx.simple_cycles(graph), key=len)
    cycles = [c for c in found if frozenset(c) not in KNOWN_CYCLES]
    lines = []
    for cycle in cycles[:10]:
        hops = zip(cycle, cycle[1:] + cycle[:1])
        lines.append("  " + "  ->  ".join(f"{a} ({graph.edges[a, b]['where'][0]})" for a, b in hops))
    assert not cycles, f"{len(cycles)} import cycle(s) between modules:\n" + "\n".join(lines)
    gone = KNOWN_CYCLES - {frozenset(c) for c in found}
    assert not gone, f"KNOWN_CYCLES lists cycles that no longer occur; remove them: {sorted(map(sorted, gone))}"


def test_the_checker_sees_a_back_edge_and_a_cycle(tmp_path):
    """The rule check itself: a lazy import upward is found, with its file and line; a circle is a cycle."""
    graph = nx.DiGraph()
    graph.add_edge("saec.runtime.model", "saec.training.train", where=["saec/runtime/model.py:12"])
    graph.add_edge("saec.training.train", "saec.runtime.model", where=["saec/training/train.py:3"])
    graph.add_edge("saec.compiler.ops", "saec.errors", where=["saec/compiler/ops.py:1"])
    bad = layer_violations(graph)
    assert bad == {("runtime", "training"): ["saec/runtime/model.py:12: saec.runtime.model -> saec.training.train"]}
    assert list(nx.simple_cycles(graph))

    module = tmp_path / "mod.py"
    module.write_text("import os\n\ndef f():\n    from saec.run import artifacts\n    import saec.spec.loader\n"
                      "if TYPE_CHECKING:\n    from saec.api import Run\n")
    assert imported_modules(module, "saec.training.mod") == [("saec.run.artifacts", 4), ("saec.spec.loader", 5),
                                                              ("saec.api", 7)]
    assert _typing_only_lines(ast.parse(module.read_text())) == {7}
