"""The package's shape (ARCHITECTURE.md): imports flow one way and form no circle.

    cli -> experiments -> deploy -> training -> agents | data -> nets -> base (lps.files, lps.host)

Every import is counted, including the ones inside functions (a lazy import that goes up is still
an upward dependency). `lps/__init__.py` is the public facade and may reach anywhere;
`lps/client.py` is the single file a robot copies and imports nothing from lps.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "lps"

# floor of each top-level part of the package; a module may import only from floors below its own,
# or from its own package (agents and data share a floor but neither may import the other)
FLOORS = {
    "files": 0, "host": 0, "client": 0,  # client: the wire format, standalone
    "nets": 1,
    "agents": 2, "data": 2,
    "training": 3,
    "deploy": 4,
    "experiments": 5,
    "cli": 6,
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The lps modules `path` imports (an imported name that is a module counts as that module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("lps")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lps") and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
    return {m for m in out if m in known}


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


GRAPH = {name: imports_of(path, set(modules())) for name, path in modules().items()}


def test_every_module_has_a_floor():
    unplaced = sorted(m for m in GRAPH if m not in ("lps", "lps.client") and part(m) not in FLOORS)
    assert not unplaced, f"modules outside the layout (give them a package and a floor): {unplaced}"


@pytest.mark.parametrize("package", sorted({part(m) for m in GRAPH if part(m) in FLOORS and "." in m[4:]}))
def test_packages_say_what_they_own(package):
    init = ROOT / package / "__init__.py"
    assert init.exists() and ast.get_docstring(ast.parse(init.read_text())), f"lps/{package}/__init__.py needs a docstring"


def test_imports_only_go_down():
    upward = []
    for importer, imported in GRAPH.items():
        if importer in ("lps", "lps.client"):
            continue
        for target in imported:
            if target == "lps":
                upward.append(f"{importer} -> lps (the facade)")
                continue
            a, b = part(importer), part(target)
            if a != b and FLOORS[b] >= FLOORS[a]:
                upward.append(f"{importer} -> {target}")
    assert not upward, "imports that go up or sideways:\n  " + "\n  ".join(sorted(upward))


def test_the_robot_client_stands_alone():
    assert not GRAPH["lps.client"], f"lps/client.py must import nothing from lps: {GRAPH['lps.client']}"


def test_no_import_circles():
    seen, on_path, circles = set(), [], []

    def visit(m):
        if m in on_path:
            circles.append(" -> ".join(on_path[on_path.index(m):] + [m]))
            return
        if m in seen:
            return
        seen.add(m)
        on_path.append(m)
        for n in sorted(GRAPH[m]):
            if n != "lps":  # the facade's own lazy imports are not dependencies of the package
                visit(n)
        on_path.pop()

    for m in sorted(GRAPH):
        if m != "lps":
            visit(m)
    assert not circles, "import circles:\n  " + "\n  ".join(circles)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check itself: a lazy import from training into deploy is found."""
    fake = tmp_path / "m.py"
    fake.write_text("def f():\n    from lps.deploy.policy import load_policy\n")
    assert imports_of(fake, set(GRAPH)) == {"lps.deploy.policy"}


# --- sizes a reader can hold (issue 33's targets, kept) ----------------------------------------

MAX_FUNCTION_LINES = 60  # def to last line, decorators excluded
MAX_DOCSTRING_LINES = 10  # a module says what it is and points to its docs page
MAX_IMPORTS_IN_FUNCTIONS = 80  # optional or heavy dependencies only (JAX kept out of JAX-free modules)


def trees() -> dict[str, ast.Module]:
    return {str(p.relative_to(ROOT.parent)): ast.parse(p.read_text()) for p in modules().values()}


def imports_inside_functions(tree: ast.AST) -> int:
    def count(node, inside: bool) -> int:
        n = 0
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and inside:
                n += 1
            n += count(child, inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
        return n

    return count(tree, False)


def test_functions_and_module_docstrings_stay_short():
    long_functions = [f"{path}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
                      for path, tree in trees().items() for node in ast.walk(tree)
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]  # fmt: skip
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"
    long_docs = [path for path, tree in trees().items()
                 if len((ast.get_docstring(tree, clean=False) or "").splitlines()) > MAX_DOCSTRING_LINES]  # fmt: skip
    assert not long_docs, f"module docstrings over {MAX_DOCSTRING_LINES} lines (move the essay to docs/): {long_docs}"


def test_imports_inside_functions_are_few():
    counts = {path: imports_inside_functions(tree) for path, tree in trees().items()}
    total = sum(counts.values())
    worst = sorted(counts.items(), key=lambda kv: -kv[1])[:5]
    assert total <= MAX_IMPORTS_IN_FUNCTIONS, (
        f"{total} imports inside functions (at most {MAX_IMPORTS_IN_FUNCTIONS}: only optional or heavy "
        f"dependencies belong there; import light modules at the top). Most: {worst}"
    )
    fake = ast.parse("import os\ndef f():\n    import json\n    def g():\n        from x import y\n")
    assert imports_inside_functions(fake) == 2  # the counter itself
