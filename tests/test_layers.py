"""The architecture, checked: layer contracts, no import cycles, a small top level, lazy imports that say why.

The layers are written down in pyproject.toml ([tool.importlinter]) and DEVELOPERS.md; an import
that runs from a lower layer to a higher one, or a circle of imports, fails here before a
reviewer has to notice it.
"""

import ast
import os
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "lossprobe"

# Dependencies a function may import lazily, each for a reason its comment names: optional
# extras, a platform, or import time that `import lossprobe` / `lossprobe --help` should not pay.
LAZY_OK = ("ray", "transformers", "pytorch_lightning", "lightning", "torch.utils.tensorboard", "xarray", "selenium", "fcntl", "sklearn", "scipy.optimize", "scipy.stats",
           "scipy.interpolate", "scipy.ndimage", "torch.nn.attention", "lossprobe.results.drawing",
           "torch.distributed.fsdp", "torch.distributed.tensor")


def test_layer_contracts_hold():
    cwd = os.getcwd()
    os.chdir(ROOT)  # lint-imports reads pyproject.toml from the working directory
    try:
        code = lint_imports(no_cache=True, no_logo=True)
    finally:
        os.chdir(cwd)
    assert code == 0, "an import breaks a layer contract (see the lint-imports report above)"


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
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
                out.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return out


def test_no_import_cycles():
    graph = grimp.build_graph("lossprobe", include_external_packages=False)
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(m)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_top_level_holds_few_files():
    files = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(files) <= 12, files


def _function_level_imports():
    for p in sorted(PACKAGE.rglob("*.py")):
        src = p.read_text()
        lines = src.splitlines()

        def walk(node, in_function):
            for ch in ast.iter_child_nodes(node):
                inner = in_function or isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef))
                if isinstance(ch, (ast.Import, ast.ImportFrom)) and in_function:
                    name = ch.module if isinstance(ch, ast.ImportFrom) else ch.names[0].name
                    yield p.relative_to(PACKAGE), ch.lineno, name or "", lines[ch.lineno - 1], \
                        lines[ch.lineno - 2] if ch.lineno > 1 else ""
                yield from walk(ch, inner)

        yield from walk(ast.parse(src), False)


@pytest.mark.parametrize("rule", ["allowed", "commented"])
def test_imports_inside_functions_are_lazy_for_a_reason(rule):
    bad = []
    for path, line, name, text, above in _function_level_imports():
        if rule == "allowed" and not name.startswith(LAZY_OK):
            bad.append(f"{path}:{line}: {text.strip()}")
        if rule == "commented" and "#" not in text and not above.strip().startswith("#"):
            bad.append(f"{path}:{line}: {text.strip()} (say why it is lazy in a comment)")
    assert bad == []
