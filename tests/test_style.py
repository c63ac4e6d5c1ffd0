"""House style, checked so it cannot slip: ruff over the repository, cython-lint over the
compiled core, and no function in the product code longer than FUNCTION_LINES_MAX lines
(TIGER_STYLE: a function that fits on a screen is read whole)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT_DIRS = ("core", "switch", "protocols")
FUNCTION_LINES_MAX = 70
CYTHON_LINE_LENGTH_MAX = 100

# A Cython function starts on a def/cdef/cpdef line whose signature (joined while its
# parentheses are open) ends with ':'. cdef blocks, classes, structs, enums and extern
# blocks end with ':' too, but are not functions.
CYTHON_DEF = re.compile(r"^(\s*)(async def|def|cdef|cpdef)\b.*[:]\s*$")
CYTHON_NOT_FUNCTION = re.compile(
    r"^\s*c(p)?def\s*(:|(class|struct|enum|union|extern|packed|cppclass|public|readonly)\b)")


def run(*args: str) -> subprocess.CompletedProcess:
    # cython-lint runs pycodestyle by name: the interpreter's own bin directory comes first.
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_ruff_is_clean():
    out = run("ruff", "check", "--no-cache", str(ROOT))
    assert out.returncode == 0, out.stdout + out.stderr


def test_cython_lint_is_clean():
    # Every .pyx and .pxd of the core, with pyproject.toml's [tool.cython-lint] settings.
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "core").glob("*.p[yx][xd]"))
    assert files
    out = run("cython_lint.cython_lint", "--max-line-length", str(CYTHON_LINE_LENGTH_MAX),
              *files)
    assert out.returncode == 0, out.stdout + out.stderr


def _signature(lines: list[str], start: int) -> tuple[str, int]:
    """The def line and its continuation lines joined, and the index of its last line."""
    text, end = lines[start], start
    while text.count("(") > text.count(")") and end + 1 < len(lines):
        end += 1
        text += " " + lines[end].strip()
    return re.sub(r"\s#.*$", "", text), end


def cython_functions(path: Path) -> list[tuple[int, int]]:
    """(first line, length) of every function in a .pyx or .pxd: from its def line to the last
    line before the next non-blank line at the same or lower indentation."""
    lines = path.read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        if "(" not in line or CYTHON_NOT_FUNCTION.match(line):
            continue
        signature, last = _signature(lines, i)
        m = CYTHON_DEF.match(signature)
        if m is None:
            continue
        indent = len(m.group(1))
        for j in range(last + 1, len(lines)):
            text = lines[j]
            if not text.strip():
                continue
            if len(text) - len(text.lstrip()) <= indent:
                break
            last = j
        found.append((i + 1, last - i + 1))
    return found


def python_functions(path: Path) -> list[tuple[int, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(node.lineno, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]


def function_lengths() -> list[tuple[str, int, int]]:
    found = []
    for directory in PRODUCT_DIRS:
        for path in sorted((ROOT / directory).rglob("*")):      # subpackages too
            if path.suffix == ".py":
                functions = python_functions(path)
            elif path.suffix in (".pyx", ".pxd"):
                functions = cython_functions(path)
            else:
                continue
            found += [(str(path.relative_to(ROOT)), line, n) for line, n in functions]
    return found


def test_the_scanner_finds_the_functions_it_should():
    lengths = {(path, line): n for path, line, n in function_lengths()}
    assert len(lengths) > 400
    iso_decode = next(line for line, text in enumerate(
        (ROOT / "core" / "isocodec.pyx").read_text().splitlines(), 1)
        if text.startswith("cdef int iso_decode("))
    assert 20 < lengths["core/isocodec.pyx", iso_decode] <= FUNCTION_LINES_MAX
    native_msg = (ROOT / "core" / "native_msg.pyx").read_text().splitlines()
    parse_message = next(i for i, text in enumerate(native_msg, 1)
                         if text.startswith("cdef const char* parse_message("))
    assert ("core/native_msg.pyx", parse_message) in lengths   # a two-line signature


def test_functions_fit_on_a_screen():
    long = [f"{path}:{line}: {n} lines" for path, line, n in function_lengths()
            if n > FUNCTION_LINES_MAX]
    assert not long, (f"functions over {FUNCTION_LINES_MAX} lines (split them by concern):\n"
                      + "\n".join(long))


def test_every_package_is_in_pyproject():
    """A package left out of pyproject's list imports in an editable install (the tests) and
    is missing from a plain one (what a user deploys)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    roots = {"core": "onecard.core", "protocols": "onecard.protocols",
             "switch": "onecard.switch", "bench": "onecard.bench"}
    found = set()
    for folder, name in roots.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    assert found == listed, f"missing {sorted(found - listed)}, stale {sorted(listed - found)}"
