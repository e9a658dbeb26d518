"""The layout the README's "Layout" table describes: ``streams/domain`` (profiles, their fold, identity,
merges, rules, resolution, config schema) and ``models/features`` import no stream, broker, storage, JSON
or YAML library, not even through each other, and no plumbing module of ``streams``: they are pure
functions over plain values, testable and reusable without a broker. And no module imports in a cycle."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import streams.domain

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = tuple(sorted(["streams.domain"] + [m.name for m in pkgutil.walk_packages(streams.domain.__path__,
                                                                                     "streams.domain.")]))
PURE_ELSEWHERE = ("models.features",)
PLUMBING = ("faust", "mode", "aiokafka", "confluent_kafka", "rocksdict", "orjson", "json", "yaml", "msgspec",
            "lightgbm", "prometheus_client")
#: The one exception, inside functions only: the identity model reads and writes its own file.
LAZY = {"streams.domain.resolution.model": {"json"}}


def _imports(module: str) -> set[str]:
    """The modules ``module`` names in its import statements, anywhere in the file (resolved, not run)."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_the_domain_is_found() -> None:
    assert {"streams.domain.profile", "streams.domain.timeline", "streams.domain.dispatch",
            "streams.domain.rules.segments", "streams.domain.resolution.resolver"} <= set(DOMAIN)


def test_the_domain_imports_no_plumbing_library() -> None:
    code = (f"import sys\nimport {', '.join(DOMAIN + PURE_ELSEWHERE)}\n"
            f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(PLUMBING)!r})))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert found == [], f"the domain modules pull in {found}"


def test_the_domain_imports_no_plumbing_module() -> None:
    """Not even inside a function: the domain is read and tested without the plumbing around it."""
    wrong = {module: sorted(name for name in _imports(module)
                            if (name.startswith("streams.") and not name.startswith("streams.domain"))
                            or (name.split(".")[0] in PLUMBING and name not in LAZY.get(module, set())))
             for module in DOMAIN + PURE_ELSEWHERE}
    assert {module: names for module, names in wrong.items() if names} == {}


def _run_at_import(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements of ``body`` that run when the module is imported: module level, also inside
    ``if``, ``try``, ``with``, ``match`` and class bodies, but not in functions nor in the branch of an
    ``if TYPE_CHECKING`` that only a type checker takes (the ``else`` of ``if TYPE_CHECKING``, the
    body of ``if not TYPE_CHECKING``, do run)."""
    found: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            negated = isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not)
            found += _run_at_import(node.body if negated else node.orelse)
            continue
        found.append(node)
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                found += _run_at_import([n for n in inner if isinstance(n, ast.stmt)]
                                        + [s for h in inner if isinstance(h, ast.ExceptHandler) for s in h.body]
                                        + [s for c in inner if isinstance(c, ast.match_case) for s in c.body])
    return found


def test_the_cycle_check_reads_which_imports_run_at_import_time() -> None:
    source = """
import a
if TYPE_CHECKING:
    import checker_only
else:
    import b
if not TYPE_CHECKING:
    import c
else:
    import checker_only_too
try:
    import d
except ImportError:
    import e
match x:
    case 1:
        import f
class K:
    import g
def later():
    import in_a_function
"""
    imported = {alias.name for node in _run_at_import(ast.parse(source).body) if isinstance(node, ast.Import)
                for alias in node.names}
    assert imported == {"a", "b", "c", "d", "e", "f", "g"}


def test_no_import_cycle_among_the_packages_modules() -> None:
    """Imports that run at import time (not inside a function nor under TYPE_CHECKING), relative ones
    resolved."""
    modules = sorted({m.name for package in ("streams", "schemas", "models")
                      for m in pkgutil.walk_packages([str(ROOT / package)], f"{package}.")} | set(DOMAIN))
    edges: dict[str, set[str]] = {}
    for module in modules:
        path = ROOT / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = ROOT / module.replace(".", "/") / "__init__.py"
        if not path.exists():
            continue
        tree = ast.parse(path.read_text(), str(path))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        names: set[str] = set()
        for node in _run_at_import(tree.body):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    parts = package.split(".")
                    anchor = ".".join(parts[:len(parts) - node.level + 1])
                    base = f"{anchor}.{base}" if base else anchor
                # `from package import submodule` imports the submodule; the package itself is an ancestor,
                # which Python always starts first, so it is no edge.
                names.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                             for alias in node.names)
        edges[module] = {name for name in names
                         if name in modules and name != module and not module.startswith(name + ".")}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in modules:
        if module not in state:
            visit(module, [module])
    assert cycles == []
