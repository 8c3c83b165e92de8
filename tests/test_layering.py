"""The package's import graph: layers that only point down, and no module importing itself back.

The layers are the table in ``CONTRIBUTING.md`` (section "Layers"), read from there: a module may
import its own package and the packages of lower rows. Every import counts: at load time, inside
functions (lazy) and under ``TYPE_CHECKING`` (a cycle of types is a cycle of design even when
Python tolerates it).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src"
PACKAGE = "fellrec"
CONTRIBUTING = ROOT / "CONTRIBUTING.md"


@dataclass(frozen=True)
class Import:
    """One ``fellrec`` module an import statement names."""

    path: Path
    line: int
    statement: str
    target: str


@dataclass(frozen=True)
class Violation:
    """An import of a package that sits in the importer's row or above it."""

    path: Path
    line: int
    statement: str
    importer: str
    imported: str
    importer_row: int
    imported_row: int

    def __str__(self) -> str:
        where = "the same row as" if self.importer_row == self.imported_row else "a higher row than"
        return (
            f"{self.path}:{self.line}: `{self.statement}` imports {self.imported} "
            f"(row {self.imported_row}) from {self.importer} (row {self.importer_row}), "
            f"{where} its own"
        )


def layer_table(text: str) -> dict[str, int]:
    """The row of each package or top-level module in the "Layers" section's table.

    Raises:
        ValueError: No such section, no table in it, or a name in two rows.
    """
    section = re.search(r"^## Layers\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    if section is None:
        raise ValueError("no '## Layers' section")
    rows: dict[str, int] = {}
    for line in section.group(1).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].isdigit():
            continue
        for name in re.findall(r"`([^`]+)`", cells[1]):
            if name in rows:
                raise ValueError(f"{name} is in rows {rows[name]} and {cells[0]}")
            rows[name] = int(cells[0])
    if not rows:
        raise ValueError("the '## Layers' section has no table")
    return rows


def module_name(path: Path, source: Path) -> str:
    name = ".".join(path.relative_to(source).with_suffix("").parts)
    return name.removesuffix(".__init__")


def unit(module: str) -> str:
    """The package (or top-level module) a module belongs to: ``fellrec.data.split`` -> ``data``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports(path: Path, source: Path) -> list[Import]:
    """Every ``fellrec`` module the import statements of ``path`` load (relative ones resolved).

    ``from fellrec.x import y`` loads ``fellrec.x``, and ``fellrec.x.y`` too when that is a module.
    """
    text = path.read_text(encoding="utf-8")
    here = module_name(path, source).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(text, filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *filter(None, [base])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                is_module = (source / Path(*submodule.split("."))).with_suffix(".py").is_file() or (
                    source / Path(*submodule.split(".")) / "__init__.py"
                ).is_file()
                targets += [base, submodule] if is_module else [base]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        ours = [t for t in dict.fromkeys(targets) if t == PACKAGE or t.startswith(f"{PACKAGE}.")]
        if ours:
            statement = " ".join((ast.get_source_segment(text, node) or "").split())
            found += [Import(path, node.lineno, statement, target) for target in ours]
    return found


def modules(source: Path) -> dict[str, Path]:
    return {module_name(p, source): p for p in sorted((source / PACKAGE).rglob("*.py"))}


def unplaced(source: Path, rows: dict[str, int]) -> list[str]:
    """Packages and top-level modules that have no row in the table."""
    return sorted({unit(name) for name in modules(source)} - set(rows))


def upward_imports(source: Path, rows: dict[str, int]) -> list[Violation]:
    """Every import of a package in the importer's row or a higher one (another package)."""
    found: dict[tuple[Path, int, str], Violation] = {}
    for name, path in modules(source).items():
        importer = unit(name)
        for item in imports(path, source):
            imported = unit(item.target)
            if imported == importer or imported not in rows or importer not in rows:
                continue
            if rows[imported] >= rows[importer]:
                found.setdefault(
                    (path, item.line, imported),
                    Violation(
                        path.relative_to(source),
                        item.line,
                        item.statement,
                        importer,
                        imported,
                        rows[importer],
                        rows[imported],
                    ),
                )
    return list(found.values())


def import_graph(source: Path = SOURCE) -> dict[str, set[str]]:
    paths = modules(source)
    return {
        name: {item.target for item in imports(path, source)} & set(paths) - {name}
        for name, path in paths.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def rows() -> dict[str, int]:
    return layer_table(CONTRIBUTING.read_text(encoding="utf-8"))


def test_cycle_finder_finds_a_hand_made_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert "fellrec.training.rounds.loop" in graph  # the walk found the package
    assert cycles(graph) == []


def test_the_table_is_read_from_contributing(rows):
    assert rows["fellrec"] == 1
    assert rows["data"] < rows["metrics"] < rows["models"] < rows["training"] < rows["cli"]
    assert rows["training"] < rows["reporting"]  # the Lightning layer never imports reporting
    assert rows["lightning_cli"] == rows["config_parser"]


def test_every_package_has_a_row(rows):
    assert unplaced(SOURCE, rows) == [], "add a row to CONTRIBUTING.md's 'Layers' table"


def test_no_package_imports_a_higher_one(rows):
    assert modules(SOURCE), "no fellrec modules found"
    violations = upward_imports(SOURCE, rows)
    assert not violations, "imports that point up (under src/):\n" + "\n".join(map(str, violations))


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A small package with one import of each kind that breaks the layers, and some that don't."""
    for package in ("data", "models", "training", "commands"):
        write(tmp_path, f"fellrec/{package}/__init__.py", "")
    write(tmp_path, "fellrec/__init__.py", '__version__ = "0"\n')
    write(tmp_path, "fellrec/cli.py", "from fellrec.commands import COMMANDS\n")
    write(tmp_path, "fellrec/training/loop.py", "from fellrec.models.split import x\n")
    write(tmp_path, "fellrec/models/split.py", "from fellrec import __version__\nx = 1\n")
    write(
        tmp_path,
        "fellrec/data/reader.py",
        "import os\n\n\ndef read():\n    from fellrec.training.loop import FederatedLoop\n",
    )
    write(
        tmp_path,
        "fellrec/models/text.py",
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from ..training import loop\n",
    )
    write(tmp_path, "fellrec/commands/cost.py", "import fellrec.cli\n")
    write(tmp_path, "fellrec/commands/report.py", "from fellrec.reports import x\n")
    return tmp_path


PLANTED_ROWS = {"fellrec": 1, "data": 2, "models": 3, "reports": 3, "training": 4, "commands": 5}


def test_planted_upward_imports_are_named_with_file_line_and_statement(planted):
    rows = {**PLANTED_ROWS, "cli": 6}
    found = sorted(map(str, upward_imports(planted, rows)))
    assert found == [
        "fellrec/commands/cost.py:1: `import fellrec.cli` imports cli (row 6) from commands "
        "(row 5), a higher row than its own",
        "fellrec/data/reader.py:5: `from fellrec.training.loop import FederatedLoop` imports "
        "training (row 4) from data (row 2), a higher row than its own",
        "fellrec/models/text.py:4: `from ..training import loop` imports training (row 4) from "
        "models (row 3), a higher row than its own",
    ]


def test_a_sideways_import_breaks_the_layers_too(planted):
    write(planted, "fellrec/models/leak.py", "from fellrec.reports import x\n")
    rows = {**PLANTED_ROWS, "cli": 6}
    assert [str(v) for v in upward_imports(planted, rows) if v.importer_row == 3] == [
        "fellrec/models/leak.py:1: `from fellrec.reports import x` imports reports (row 3) "
        "from models (row 3), the same row as its own",
        "fellrec/models/text.py:4: `from ..training import loop` imports training (row 4) from "
        "models (row 3), a higher row than its own",
    ]


def test_a_package_without_a_row_is_named(planted):
    assert unplaced(planted, PLANTED_ROWS) == ["cli"]


def test_the_table_parser_refuses_a_name_in_two_rows():
    text = "## Layers\n\n| row | names | |\n| --- | --- | --- |\n| 1 | `a` | |\n| 2 | `a` | |\n"
    with pytest.raises(ValueError, match="a is in rows 1 and 2"):
        layer_table(text)
    assert layer_table(text.replace("| 2 | `a`", "| 2 | `b`, `c`")) == {"a": 1, "b": 2, "c": 2}
