"""The package's structure, from its import graph: subpackages are layers, lower layers never
import higher ones (not even inside a function), peers stay apart, and no import cycle exists.

    runtime                      backend, MPI, interrupts, resources, profiling, CUDA launchers
    solver | network | data      MGRIT and the serial chain | steps, networks | data sets
    objective                    objective and gradient across the ranks, inference
    io                           model files, checkpoints
    training                     settings, methods, optimisers, the trainer
    cli | torch                  the command line | the PyTorch module (gpubraid.torch)
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "gpubraid"

LAYERS = {"errors": 0, "runtime": 1, "solver": 2, "network": 2, "data": 2, "objective": 3, "io": 4,
          "training": 5, "cli": 6, "torch": 6}
FACADE = {"gpubraid", "gpubraid.__main__"}   # the package's own entry points may reach any layer


@functools.lru_cache(maxsize=None)
def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules) -> set[str]:
    """gpubraid modules that ``name`` imports anywhere in its body (relative or absolute)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            mod = ".".join(base + (node.module.split(".") if node.module else []))
            targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("gpubraid"):
                found.add(t)
                break
    return found


@functools.lru_cache(maxsize=None)
def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_subpackage_has_a_layer():
    subs = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subs - {"__pycache__"} <= set(LAYERS), subs - set(LAYERS)


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m not in FACADE))
def test_lower_layers_never_import_higher_ones(module):
    graph = _graph()
    mine = LAYERS[_layer(module)]
    for dep in graph[module]:
        theirs = LAYERS.get(_layer(dep), -1)
        if dep in ("gpubraid",):
            continue
        assert theirs < mine or _layer(dep) == _layer(module), f"{module} (layer {mine}) imports {dep} (layer {theirs})"


def test_solver_never_imports_the_network():
    for module, deps in _graph().items():
        if _layer(module) == "solver":
            assert not {d for d in deps if _layer(d) in ("network", "data")}, (module, deps)


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph.get(m, ()):
            if d in FACADE:
                continue
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in graph:
        if m not in state and m not in FACADE:
            visit(m, [m])


MAX_MODULE_LINES, MAX_CLASS_LINES = 400, 300


def test_no_module_over_400_lines():
    over = {str(p.relative_to(PKG.parent)): n for p in sorted(PKG.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"


def test_no_class_over_300_lines():
    over = {}
    for p in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef) and (n := node.end_lineno - node.lineno + 1) > MAX_CLASS_LINES:
                over[f"{p.relative_to(PKG.parent)}:{node.name}"] = n
    assert not over, f"classes over {MAX_CLASS_LINES} lines: {over}"


# -- MPI tags: one registry ------------------------------------------------------------------------
SENDS = {"isend": 2, "recv_into": 2, "send_obj": 2, "recv_obj": 1}   # method -> index of the tag argument


def _tag_uses():
    """(module, line, tag expression) of every point-to-point call in the package outside runtime.comm."""
    for name, path in sorted(_modules().items()):
        if name == "gpubraid.runtime.comm":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SENDS:
                args = node.args + [k.value for k in node.keywords if k.arg == "tag"]
                i = SENDS[node.func.attr]
                yield name, node.lineno, args[i] if len(args) > i else None


def _from_registry(expr) -> bool:
    """``tags.NAME`` or ``tags.ghost(...)``."""
    if isinstance(expr, ast.Call):
        expr = expr.func
    return isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "tags"


def test_every_mpi_tag_comes_from_the_registry():
    uses = list(_tag_uses())
    assert len(uses) >= 10, uses          # the scan finds the package's sends and receives
    bad = [(m, line, ast.unparse(e) if e is not None else None) for m, line, e in uses if not _from_registry(e)]
    assert not bad, f"MPI tags not from gpubraid.runtime.tags: {bad}"
    for name, path in _modules().items():
        if name == "gpubraid.runtime.tags":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                assert not node.id.startswith("TAG"), f"{name}:{node.lineno} defines a tag {node.id}"


def test_registered_tags_never_collide():
    from gpubraid.runtime import tags

    singles = {k: v for k, v in vars(tags).items() if k.isupper() and k not in ("GHOST", "MAX_LEVELS")}
    ghost = set(range(tags.GHOST, tags.GHOST + tags.MAX_LEVELS))
    values = list(singles.values())
    assert len(set(values)) == len(values), singles
    assert not ghost & set(values), singles
    assert all(0 <= v <= 32767 for v in values + sorted(ghost))
    assert tags.ghost(tags.MAX_LEVELS - 1) == max(ghost)
    with pytest.raises(ValueError):
        tags.ghost(tags.MAX_LEVELS)


def test_every_subpackage_is_installed():
    """pyproject's explicit package list names every subpackage (a missing one installs without it)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    listed = set(tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    subs = {f"gpubraid.{p.name}" for p in PKG.iterdir() if (p / "__init__.py").exists()}
    assert subs | {"gpubraid"} <= listed, sorted(subs - listed)
