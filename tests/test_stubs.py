"""The .pyi stubs next to the compiled modules say what the modules hold: every public name a
stubbed class defines is one its compiled class has (and the other way round), and every
module-level name a stub declares exists in the module."""

import ast
import importlib
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "core"
STUBS = sorted(CORE.glob("*.pyi"))


def public(name: str) -> bool:
    return not name.startswith("_")


def declared(body: list[ast.stmt]) -> set[str]:
    """Names a stub body defines (functions, classes, annotated or assigned names)."""
    out = set()
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, ast.Assign):
            out.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in out if public(n)}


def runtime(cls: type) -> set[str]:
    """A class's own public names: what dir() shows less what its bases bring (object's
    attributes for a cdef class, int's for an enum)."""
    inherited = set().union(*(dir(base) for base in cls.__mro__[1:]))
    return {n for n in dir(cls) if public(n) and n not in inherited}


def test_the_compiled_modules_with_a_python_api_have_stubs():
    assert {p.stem for p in STUBS} >= {"engine", "state", "maps", "commit", "authorise",
                                       "journal", "ledger", "records"}
    assert (CORE / "py.typed").exists()


@pytest.mark.parametrize("stub", STUBS, ids=lambda p: p.stem)
def test_stub_classes_match_the_compiled_classes(stub):
    module = importlib.import_module(f"onecard.core.{stub.stem}")
    # A private class is the stub's own (a TypedDict a method returns), not the module's.
    classes = [n for n in ast.parse(stub.read_text()).body
               if isinstance(n, ast.ClassDef) and public(n.name)]
    for node in classes:
        compiled = getattr(module, node.name)
        assert declared(node.body) == runtime(compiled), node.name


@pytest.mark.parametrize("stub", STUBS, ids=lambda p: p.stem)
def test_stub_module_names_exist_in_the_module(stub):
    module = importlib.import_module(f"onecard.core.{stub.stem}")
    missing = declared(ast.parse(stub.read_text()).body) - set(dir(module))
    assert not missing
