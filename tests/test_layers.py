"""The house is one-way: the lower layer imports no stage, stages import only the lower layer and earlier stages,
and only the top (workflow, cli) sees everything. Walks every import of the package, at module level and inside
functions, from the source (so an import hidden in a function to dodge a cycle is caught too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "engine"
STAGES = ("ingest", "planning", "preprocessing", "training", "inference", "evaluation")  # the data flow, in order
TOP = ("workflow", "cli")
LOWER = (
    "errors",
    "resources",
    "project",
    "device",
    "tabular",
    "parallel",
    "plan",
    "images",
    "catalog",
    "store",
    "spec",
    "networks",
    "volumes",
)


def _part(module: str) -> str:
    """The top-level folder (or module) of `voxelbase.<part>...`."""
    return module.split(".")[1] if module.count(".") else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `voxelbase.*` import in a file, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("voxelbase")]
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("voxelbase") and not node.level
        ):
            if node.module == "voxelbase":
                found += [(node.lineno, f"voxelbase.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; the house uses absolute imports")
    return found


def _violation(importer: str, imported: str) -> str | None:
    if imported in ("", importer):
        return None
    if imported not in (*STAGES, *TOP, *LOWER):
        return f"{imported!r} is not placed in a layer (add it to the lower layer, the stages or the top)"
    if importer in LOWER and imported in (*STAGES, *TOP):
        return f"the lower layer ({importer}) imports the stage {imported}"
    if importer in STAGES:
        if imported in TOP:
            return f"the stage {importer} imports the top ({imported})"
        if imported in STAGES and STAGES.index(imported) > STAGES.index(importer):
            return f"the stage {importer} imports {imported}, which comes after it in the data flow"
    return None


def _all_edges() -> list[tuple[str, int, str, str]]:
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        importer = _part(".".join(relative.parts))
        if not importer:  # engine/__init__.py
            continue
        for line, module in _imports(path):
            edges.append((str(path.relative_to(PACKAGE.parent)), line, importer, _part(module)))
    return edges


def test_every_import_follows_the_data_flow():
    problems = [f"{file}:{line}: {why}" for file, line, a, b in _all_edges() if (why := _violation(a, b))]
    assert problems == [], "\n".join(problems)


def test_every_folder_is_placed_in_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    parts -= {"__init__", "__pycache__"}
    assert parts == set(STAGES) | set(TOP) | set(LOWER)


@pytest.mark.parametrize(
    ("importer", "imported", "expected"),
    [
        ("inference", "evaluation", "comes after it"),
        ("training", "inference", "comes after it"),
        ("images", "ingest", "lower layer"),
        ("catalog", "workflow", "lower layer"),
        ("evaluation", "cli", "imports the top"),
        ("evaluation", "inference", None),
        ("inference", "preprocessing", None),
        ("workflow", "training", None),
        ("spec", "catalog", None),
    ],
)
def test_the_rule_itself(importer, imported, expected):
    """The checker refuses what it should (so the walk above can fail) and allows the data flow."""
    why = _violation(importer, imported)
    assert (why is None) if expected is None else (expected in why)


SQL = __import__("re").compile(
    r"\b(SELECT\s.+\sFROM|INSERT (OR REPLACE )?INTO|DELETE FROM|UPDATE \w+ SET|CREATE (TABLE|VIEW))\b"
)
PLAN_LOOKUP = __import__("re").compile(
    r"\bplan\w*\[[\"']|\[[\"'](architecture|num_classes|n_channels|patch_size)[\"']\]"
)


def _strings(path: Path):
    """(line, text) of every string constant of a file that is not a docstring."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_sql_outside_the_catalog():
    """SQL lives in `engine/catalog` (and `schema/`); the CLI's hint of a query to type is text for the user."""
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {text[:60]!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "catalog" not in path.relative_to(PACKAGE).parts and path.name != "cli.py"
        for line, text in _strings(path)
        if SQL.search(text)
    ]
    assert found == [], "\n".join(found)


def test_the_sql_check_can_fail():
    assert SQL.search("SELECT content_hash FROM datasets WHERE name = ?")
    assert SQL.search("INSERT OR REPLACE INTO steps VALUES (?)")
    assert not SQL.search("select the best configuration from the ranking")


def test_plans_are_read_through_the_typed_plan_only():
    """No `plan["..."]` look-up outside `engine/plan.py`: plans are `ConfigurationPlan` objects everywhere else
    (the planner's rules build the artifact's dicts before there is a plan object)."""
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "plan.py" and path.relative_to(PACKAGE).as_posix() != "planning/rules.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PLAN_LOOKUP.search(line)
    ]
    assert found == [], "\n".join(found)
    assert PLAN_LOOKUP.search('int(plan["num_classes"])') and PLAN_LOOKUP.search("arch['patch_size']")


WRITE = __import__("re").compile(r"\b(?:INSERT (?:OR REPLACE )?INTO|DELETE FROM|UPDATE) ([a-z_]+)")


def test_each_table_has_one_writer():
    """Every INSERT, UPDATE and DELETE of a table stands in one module of `engine/catalog`."""
    writers: dict[str, set[str]] = {}
    for path in sorted((PACKAGE / "catalog").glob("*.py")):
        for _, text in _strings(path):
            for table in WRITE.findall(text):
                writers.setdefault(table, set()).add(path.name)
    shared = {table: sorted(modules) for table, modules in writers.items() if len(modules) > 1}
    assert shared == {}
    assert {"runs", "metrics", "splits", "plans", "datasets", "steps"} <= set(writers)
