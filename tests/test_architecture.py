"""The package's shape: the core stays free of the lake, MLflow, Airflow, Spark and CLIs,
the library never imports the DAG-only helpers or ``jobs``, and no modules import each
other in a cycle (lazy imports inside functions count: they only hide a cycle).

Read from the source's syntax tree, so nothing is imported and a new import anywhere in a
module (top level or inside a function) is seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vqrec"

# What the method may not depend on: stores, trackers, schedulers, Spark, command lines.
CORE_FORBIDDEN = (
    "argparse",
    "mlflow",
    "airflow",
    "pyspark",
    "py4j",
    "pyarrow",
    "vqrec.lake",
    "vqrec.stages",
    "vqrec.spark",
    "vqrec.mlops",
    "vqrec.orchestration",
    "vqrec.devtools",
    "vqrec.cli",
    "jobs",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            hidden.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return hidden


def imports_of(path: Path, runtime_only: bool = False) -> set[str]:
    """Every module named by an import statement of ``path`` (relative imports resolved).

    ``runtime_only`` leaves out imports under ``if TYPE_CHECKING:`` (they cannot cycle).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else None
    skip = _type_only(tree) if runtime_only else set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = (package or module_name(path)).split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # "from vqrec.stages import train" imports the module vqrec.stages.train.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_imports_no_lake_mlflow_airflow_spark_or_cli(path: Path) -> None:
    bad = sorted(
        name for name in imports_of(path) if any(_matches(name, f) for f in CORE_FORBIDDEN)
    )
    assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {bad}: keep vqrec.core pure"


def test_only_orchestration_imports_airflow_and_nothing_imports_jobs() -> None:
    for name, path in modules().items():
        found = imports_of(path)
        if any(_matches(i, "jobs") for i in found):
            pytest.fail(f"{name} imports jobs/ (spark-submit scripts, not a library)")
        if name != "vqrec.orchestration.airflow_support":
            airflow = sorted(i for i in found if _matches(i, "airflow"))
            assert not airflow, f"{name} imports {airflow}: only the DAG helpers may"


def test_no_import_cycles() -> None:
    mods = modules()
    graph = {
        name: {i for i in imports_of(path, runtime_only=True) if i in mods and i != name}
        for name, path in mods.items()
    }
    # A package's __init__ is imported with each of its modules: not an edge of a cycle.
    graph = {n: {d for d in deps if not n.startswith(d + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_checks_see_a_forbidden_import(tmp_path: Path) -> None:
    """The AST walk finds lazy and relative imports (so the purity test can fail)."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    import mlflow\n    from vqrec.lake import store\n")
    assert {"mlflow", "vqrec.lake", "vqrec.lake.store"} <= imports_of_file(source)


def imports_of_file(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names
