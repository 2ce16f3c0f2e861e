"""The layering written in the README's "Architecture" table holds: imports point up the table
(to lower layers), there is no import cycle, and every module of the package has a row."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "tinygrad_rnn"


def layers() -> list[list[str]]:
    """The table's rows, lowest layer first: each a list of paths relative to the package."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = line.split("|")
        if len(cells) > 2 and "`" in cells[1]:
            rows.append(re.findall(r"`([^`]+)`", cells[1]))
    return rows


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules that `path` imports (also inside functions; not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    files = sorted(PKG.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports(p, modules) for p in files}


def row_of(module: str, rows: list[list[str]]) -> int | None:
    rel = module.split(".", 1)[1] if "." in module else "__init__"
    path = rel.replace(".", "/")
    for i, row in enumerate(rows):
        for entry in row:
            if entry.endswith("/") and (path + "/").startswith(entry):
                return i
            if entry == path + ".py" or (entry == "__init__.py" and path == "__init__"):
                return i
    return None


def test_every_module_has_a_row() -> None:
    rows = layers()
    assert len(rows) >= 10, rows
    missing = [m for m in graph() if row_of(m, rows) is None]
    assert not missing, f"not in the README's Architecture table: {missing}"


def test_imports_point_to_lower_layers() -> None:
    rows, g = layers(), graph()
    wrong = [f"{m} (row {row_of(m, rows)}) imports {t} (row {row_of(t, rows)})"
             for m, targets in g.items() for t in targets
             if (row_of(t, rows) or 0) > (row_of(m, rows) or 0)]
    assert not wrong, wrong


def test_no_import_cycle() -> None:
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(g[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])


def test_the_import_parser_sees_relative_and_function_level_imports(tmp_path: Path) -> None:
    """The parser finds relative imports, inside functions too, and skips TYPE_CHECKING."""
    pkg = tmp_path / "tinygrad_rnn"
    pkg.mkdir()
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from .a import y\n")
    modules = {"tinygrad_rnn.a", "tinygrad_rnn.b", "tinygrad_rnn.c"}
    orig = globals()["ROOT"]
    globals()["ROOT"] = tmp_path
    try:
        assert imports(pkg / "a.py", modules) == {"tinygrad_rnn.b"}
        assert imports(pkg / "b.py", modules) == {"tinygrad_rnn.a"}
        assert imports(pkg / "c.py", modules) == set()
    finally:
        globals()["ROOT"] = orig
