"""The package's layout, checked statically: no import cycles, no upward imports, and every
DVC stage depends on the code it runs.

Imports are read with ``ast`` from the source files, including imports inside function bodies:
the CLI and the stages import their heavy modules lazily, so a run-time ``sys.modules`` after
importing a command's module would miss exactly the code that runs later (and importing it
would cost seconds of torch start-up). Reading all of a module's imports over-approximates what
one command executes, which errs on the safe side for DVC deps (an extra dep re-runs a stage
too often; a missing one caches a stale output under new code).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
PKG = SRC / "acgan"

# DESIGN.md's layers, top to bottom: a module may import its own layer or a lower one.
LAYERS: tuple[tuple[str, ...], ...] = (
    # the entry points: the CLI, and the KFP components' glue (acgan.kfp_runtime, no kfp import)
    ("acgan.cli", "acgan.kfp_runtime"),
    ("acgan.data", "acgan.train", "acgan.monitor", "acgan.evaluation", "acgan.registry"),
    ("acgan.models", "acgan.metrics"),
    (
        "acgan",
        "acgan.config",
        "acgan.io",
        "acgan.errors",
        "acgan.checkpoint",
        "acgan.tracking",
        "acgan.lineage",
        "acgan.progress",
        "acgan.devices",
        "acgan.retry",
        "acgan.html",
    ),
)
# (importer, imported) pairs that the design forbids although the layers allow them.
FORBIDDEN = (("acgan.evaluation", "acgan.registry"),)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(name: str) -> list[str]:
    """The acgan modules that importing ``name`` executes: it and its parent packages."""
    mods = modules()
    out, parts = [], name.split(".")
    for i in range(1, len(parts) + 1):
        candidate = ".".join(parts[:i])
        if candidate in mods:
            out.append(candidate)
    return out


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _walk(tree: ast.AST) -> Iterable[ast.AST]:
    """Every node at every depth (function bodies too), except ``if TYPE_CHECKING:`` blocks,
    which never run."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if _is_type_checking(node):
            todo.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        todo.extend(ast.iter_child_nodes(node))


def _imports_in(tree: ast.AST, current: str) -> set[str]:
    found: set[str] = set()
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(_resolve(alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the current package
                pkg = current.split(".")
                pkg = pkg[
                    : len(pkg) - node.level + (1 if modules()[current].name == "__init__.py" else 0)
                ]
                base = ".".join([*pkg, base] if base else pkg)
            found.update(_resolve(base))
            for alias in node.names:  # `from acgan.metrics import msssim`: a submodule
                if f"{base}.{alias.name}" in modules():
                    found.update(_resolve(f"{base}.{alias.name}"))
    return {m for m in found if m.startswith("acgan")}


@cache
def graph() -> dict[str, frozenset[str]]:
    """Module -> the acgan modules it imports (anywhere in its source)."""
    return {
        name: frozenset(_imports_in(ast.parse(path.read_text()), name) - {name})
        for name, path in modules().items()
    }


def closure(roots: Iterable[str]) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph()[m])
    return seen


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best is None:
        raise AssertionError(f"{module}: in no layer of tests/test_layout.py; add it to LAYERS")
    return best


def cycles(edges: dict[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _package_imports(edges: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """The graph without the edges from a module to its own parent packages (importing
    ``acgan.train.loop`` runs ``acgan/train/__init__``: not a cycle of the code's making)."""
    return {m: frozenset(t for t in ts if not m.startswith(t + ".")) for m, ts in edges.items()}


def test_no_import_cycles() -> None:
    found = cycles(_package_imports(graph()))
    assert not found, "import cycles (imports inside functions count): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_imports_run_downward_only() -> None:
    bad = []
    for m, targets in graph().items():
        for t in targets:
            if m.startswith(t + "."):
                continue  # a module's own parent package
            if layer_of(t) < layer_of(m):
                bad.append(f"{m} -> {t} (upward)")
            for importer, imported in FORBIDDEN:
                inside = m == importer or m.startswith(importer + ".")
                if inside and (t == imported or t.startswith(imported + ".")):
                    bad.append(f"{m} -> {t} (forbidden by DESIGN.md)")
    assert not bad, "imports against the layers of ../shared/DESIGN.md:\n" + "\n".join(bad)


def test_the_layout_test_sees_function_body_imports() -> None:
    """The checks above are only as good as the import reader: the CLI imports its stages
    inside the command functions, and the reader must see them."""
    assert "acgan.evaluation.stage" in graph()["acgan.cli"] or any(
        m.startswith("acgan.cli.") for m in modules()
    )
    assert cycles({"a": frozenset({"b"}), "b": frozenset({"a"})}) == [["a", "b"]]


# ------------------------------------------------------------------- dvc deps vs the code


def command_modules(subcommand: str) -> set[str]:
    """The acgan modules ``acgan <subcommand>`` runs: the command function's own imports, the
    module-level imports of the module that defines it, and those of the module's helpers it
    calls (make_tracker, ...), then everything those import."""
    from acgan import cli as cli_mod

    group = cli_mod.cli
    cmd = group.commands[subcommand]  # type: ignore[attr-defined]
    fn = inspect.unwrap(cmd.callback)
    mod_name = fn.__module__
    mod_tree = ast.parse(Path(inspect.getfile(fn)).read_text())
    top = {n.name: n for n in mod_tree.body if isinstance(n, ast.FunctionDef)}
    body = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    roots = set(_imports_in(body, mod_name))
    helpers, todo = set(), [body]
    while todo:
        tree = todo.pop()
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in top and node.id not in helpers:
                helpers.add(node.id)
                roots |= _imports_in(top[node.id], mod_name)
                todo.append(top[node.id])
    # The CLI package counts with its modules' module-level imports only (its __init__ imports
    # every command group to register it): other commands' lazy imports are not this
    # command's code.
    cli_pkg = mod_name.split(".")[0] + ".cli"
    entry = {m for m in modules() if m == cli_pkg or m.startswith(cli_pkg + ".")}
    for m in entry:
        tree = ast.parse(modules()[m].read_text())
        module_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        roots |= _imports_in(ast.Module(body=module_level, type_ignores=[]), m)
    return closure(roots - entry) | entry


def dvc_stages() -> dict[str, dict]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: spec.get("do", spec) for name, spec in stages.items()}


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_dvc_stage_depends_on_every_module_it_runs(stage: str) -> None:
    spec = dvc_stages()[stage]
    words = spec["cmd"].split()
    assert words[0] == "acgan", f"dvc.yaml stage {stage}: expected an `acgan` command"
    deps = [REPO / d for d in spec.get("deps", [])]
    missing = sorted(
        str(modules()[m].relative_to(REPO))
        for m in command_modules(words[1])
        if not any(modules()[m] == d or d in modules()[m].parents for d in deps)
    )
    assert not missing, (
        f"dvc.yaml stage {stage} runs code it does not depend on (an edit there would not "
        f"re-run it): add to its deps: {', '.join(missing)}"
    )


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_dvc_stage_code_deps_are_code_it_runs(stage: str) -> None:
    """No code dep that the stage does not run (the exact closure: an edit elsewhere must not
    re-run a stage for nothing), and each one exists (DVC fails on a missing dep)."""
    spec = dvc_stages()[stage]
    used = [modules()[m] for m in command_modules(spec["cmd"].split()[1])]
    recipes = "recipe" in spec.get("params", [])
    for d in spec.get("deps", []):
        if not d.startswith("src/"):
            continue
        path = REPO / d
        assert path.exists(), f"dvc.yaml stage {stage}: dep {d} does not exist; fix its deps"
        if path == PKG / "recipes":
            assert recipes, f"dvc.yaml stage {stage}: depends on {d} without the recipe param"
            continue
        assert any(f == path or path in f.parents for f in used), (
            f"dvc.yaml stage {stage}: dep {d} holds no module that `acgan "
            f"{spec['cmd'].split()[1]}` imports; remove it"
        )
    if recipes:  # config.load reads the preset that `recipe:` names from this directory
        assert "src/acgan/recipes" in spec["deps"], f"dvc.yaml stage {stage}: add src/acgan/recipes"
