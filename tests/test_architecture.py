"""The floors of switch/ (docs/architecture.md): the import graph of ``onecard.switch``, read
with ``ast`` (imports inside functions and under TYPE_CHECKING included), has no circle and no
import of a higher floor; connection buffers live in one module; only the store package asks
which backend it has."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SWITCH = ROOT / "switch"
DOC = ROOT / "docs" / "architecture.md"


def floors() -> dict[str, int]:
    """Pattern -> floor, from the table of docs/architecture.md."""
    table = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|[^|]*\|(.*)\|\s*$", line)
        if m:
            for pattern in re.findall(r"`([\w.*]+)`", m.group(2)):
                assert pattern not in table, f"{pattern} placed twice in {DOC.name}"
                table[pattern] = int(m.group(1))
    assert table, f"no floors found in {DOC}"
    return table


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SWITCH.rglob("*.py")):
        parts = list(path.relative_to(SWITCH).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts) or "__init__"] = path
    return found


def floor_of(name: str, table: dict[str, int]) -> int | None:
    """The floor of the exact name, else of the longest ``prefix.*`` pattern matching it."""
    if name in table:
        return table[name]
    best = None
    for pattern, floor in table.items():
        if pattern.endswith(".*") and name.startswith(pattern[:-1]):
            if best is None or len(pattern) > len(best[0]):
                best = (pattern, floor)
    return best[1] if best else None


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of switch/ that ``name`` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                full = "onecard.switch." + module if module else "onecard.switch"
            else:
                full = node.module or ""
            targets = [full] + [f"{full}.{a.name}" for a in node.names]
        for target in targets:
            if target == "onecard.switch":
                continue
            if target.startswith("onecard.switch."):
                short = target[len("onecard.switch."):]
                if short in known and short != name:
                    found.add(short)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_of_switch_is_placed_on_a_floor(graph):
    table = floors()
    unplaced = sorted(name for name in graph if floor_of(name, table) is None)
    assert not unplaced, f"not placed in docs/architecture.md: {unplaced}"


def upward(graph: dict[str, set[str]], table: dict[str, int]) -> list[str]:
    return sorted(f"{a} ({floor_of(a, table)}) -> {b} ({floor_of(b, table)})"
                  for a, targets in graph.items() for b in targets
                  if floor_of(b, table) > floor_of(a, table))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components: any of two or more modules is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_a_higher_floor(graph):
    wrong = upward(graph, floors())
    assert not wrong, "imports of a higher floor:\n" + "\n".join(wrong)


def test_the_import_graph_has_no_circle(graph):
    assert not circles(graph), f"import circles: {circles(graph)}"


def test_the_checks_find_an_upward_import_a_circle_and_a_hidden_import(tmp_path):
    """The checks above can fail: an import inside a function under TYPE_CHECKING is found,
    and a made-up graph with an arrow up and a circle is refused."""
    hidden = tmp_path / "low.py"
    hidden.write_text("from typing import TYPE_CHECKING\n"
                      "def f():\n    if TYPE_CHECKING:\n"
                      "        from onecard.switch import high\n")
    assert imports("low", hidden, {"low": hidden, "high": hidden}) == {"high"}
    table = {"low": 0, "mid.*": 1, "mid.top": 2}
    assert floor_of("mid.x", table) == 1 and floor_of("mid.top", table) == 2
    assert upward({"low": {"mid.x"}, "mid.x": set()}, table) == ["low (0) -> mid.x (1)"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_connection_buffers_are_touched_in_the_intake_only():
    touching = sorted(str(p.relative_to(ROOT)) for p in SWITCH.rglob("*.py")
                      if re.search(r"\._buf\b", p.read_text()) and p.name != "intake.py")
    assert not touching, f"connection buffers touched outside switch/intake.py: {touching}"


def test_only_the_store_package_asks_which_backend_it_has():
    branch = re.compile(r"backend\s*[!=]=|is_postgresql\(")
    asking = []
    for path in SWITCH.rglob("*.py"):
        rel = path.relative_to(SWITCH)
        if rel.parts[0] == "store" or rel.name == "config.py":   # config validates the choice
            continue
        asking += [f"{rel}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                   if branch.search(line)]
    assert not asking, f"backend branches outside switch/store/: {asking}"
