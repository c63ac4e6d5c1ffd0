"""One family of errors (switch/errors.py): every exception class of the switch derives from
OnecardError, ``onecard`` turns one into a line on stderr and its exit status, and the admin
API answers the same classes from one table (switch/admin/problems.py)."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import onecard.switch
from onecard.switch import cli, errors
from onecard.switch.commands import terminals as terminals_command
from onecard.switch.errors import OnecardError

SWITCH = Path(onecard.switch.__file__).resolve().parent

# module -> reason, for an exception class of the switch that deliberately is not an
# OnecardError. None today: add one only with the reason it must stay outside.
OUTSIDE: dict[str, str] = {}

# Every error class as callers and tests imported it before the family existed: each still
# imports from there (defined there, or imported into it).
WHERE_THEY_WERE = {
    "onecard.switch.commands.admin": ["AdminError"],
    "onecard.switch.admin.routes": ["Problem"],
    "onecard.switch.admin.schema": ["BodyError"],
    "onecard.switch.admission": ["DataDirError"],
    "onecard.switch.store.backup": ["BackupError", "Refused", "Unauthentic"],
    "onecard.switch.catalogue": ["CatalogueError"],
    "onecard.switch.commands.common": ["DataDirBusy"],
    "onecard.switch.commands.clearing": ["FutureDate"],
    "onecard.switch.clearing.files": ["ClearingFileError"],
    "onecard.switch.clearing.hub": ["HubError"],
    "onecard.switch.clearing.positions": ["ClearingError"],
    "onecard.switch.clearing.worker": ["WorkerFailed"],
    "onecard.switch.cluster.procs": ["ClusterError"],
    "onecard.switch.config": ["ConfigError"],
    "onecard.switch.store.pg.committer": ["CommitFailed"],
    "onecard.switch.store.pg.connect": ["PgError"],
    "onecard.switch.store.pg.journal": ["JournalGap"],
    "onecard.switch.region.catalogues": ["CatalogueConflict"],
    "onecard.switch.region.link": ["RegionLinkError"],
    "onecard.switch.cluster.nats": ["NatsServerError"],
    "onecard.switch.region.routing": ["StaleRoutingTable"],
    "onecard.switch.commands.split": ["SplitError"],
    "onecard.switch.security.holders_file": ["HoldersFileError"],
    "onecard.switch.security.keystore": ["KekError"],
    "onecard.switch.store.rotate_dek": ["RotationError"],
    "onecard.switch.server": ["ListenError"],
    "onecard.switch.tls": ["TlsError"],
}


def switch_modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(onecard.switch.__path__, "onecard.switch.")]


def exception_classes() -> dict[str, type[BaseException]]:
    """module.Name -> class, for every exception class a module of the switch defines."""
    found = {}
    for name in switch_modules():
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, BaseException):
                found[f"{name}.{cls_name}"] = cls
    return found


def test_every_exception_class_of_the_switch_is_an_onecard_error():
    found = exception_classes()
    assert len(found) >= 30                       # the walk saw the subpackages
    outside = {k: v for k, v in found.items()
               if not issubclass(v, OnecardError) and v.__module__ not in OUTSIDE}
    assert not outside, f"derive these from a family of switch/errors.py: {sorted(outside)}"
    for where, cls in found.items():
        if issubclass(cls, OnecardError):
            assert cls.exit_status in (errors.EXIT_FAILED, errors.EXIT_USAGE), where


def test_no_exception_class_is_hidden_where_the_import_walk_cannot_see_it():
    """A class statement inside a function (or one deriving from a name the walk knows as an
    exception) is found by reading the source: each must be one the walk found."""
    known = {cls.__name__ for cls in exception_classes().values()}
    known |= {n for n, v in vars(builtins).items()
              if isinstance(v, type) and issubclass(v, BaseException)}
    walked = {where.rsplit(".", 1)[1] for where in exception_classes()}
    hidden = []
    for path in sorted(SWITCH.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ClassDef) and node.name not in walked and any(
                    ast.unparse(b).rsplit(".", 1)[-1] in known for b in node.bases):
                hidden.append(f"{path.relative_to(SWITCH)}:{node.lineno} {node.name}")
    assert not hidden


def test_errors_is_the_bottom_floor():
    tree = ast.parse((SWITCH / "errors.py").read_text())
    imported = [n.module if isinstance(n, ast.ImportFrom) else a.name
                for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
                for a in n.names]
    assert not [m for m in imported if m and m.startswith("onecard")], imported


def test_each_error_imports_where_it_did():
    for module, names in WHERE_THEY_WERE.items():
        m = importlib.import_module(module)
        for name in names:
            assert issubclass(getattr(m, name), OnecardError), f"{module}.{name}"


def test_one_commit_failed():
    from onecard.bench.sim import node
    from onecard.switch.store.pg import committer

    assert node.CommitFailed is committer.CommitFailed is errors.CommitFailed


def test_still_the_builtin_exceptions_existing_handlers_catch():
    from onecard.switch.admin.schema import BodyError
    from onecard.switch.catalogue import CatalogueError
    from onecard.switch.commands.clearing import FutureDate
    from onecard.switch.commands.split import SplitError
    from onecard.switch.region.link import RegionLinkError

    for cls in (BodyError, CatalogueError, FutureDate, SplitError):
        assert issubclass(cls, ValueError), cls
    assert issubclass(errors.NoDataSet, FileNotFoundError)
    assert issubclass(RegionLinkError, errors.ListenError)


@pytest.mark.parametrize(("raised", "status"), [
    (errors.ConfigError("config file x.toml: [server] hots: unknown key"), 2),
    (errors.DataDirBusy("data directory d is in use by onecard pid 7"), 2),
    (errors.NoDataSet("no data set at d/onecard.db"), 2),
    (errors.ClearingError("record 12: no such terminal"), 1),
    (errors.AdminError("409 Conflict: card is lost"), 1),
])
def test_main_turns_an_onecard_error_into_one_line_and_its_exit_status(
        monkeypatch, capsys, raised, status):
    def command(args) -> int:
        raise raised

    monkeypatch.setattr(terminals_command, "run", command)  # parser() reads it at each main
    assert cli.main(["terminals"]) == status == raised.exit_status
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"onecard: {raised}\n")


def test_anything_else_a_command_raises_is_a_traceback(monkeypatch):
    def command(args) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(terminals_command, "run", command)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["terminals"])


def test_the_admin_api_answers_each_family_from_one_table():
    from onecard.switch.admin.problems import PROBLEMS, Problem, problem_of
    from onecard.switch.admin.schema import BodyError
    from onecard.switch.catalogue import ApplicationExists, CatalogueError, NoApplication
    from onecard.switch.clearing.reader import DateError, FutureDate
    from onecard.switch.clearing.worker import WorkerFailed
    from onecard.switch.region.catalogues import CatalogueConflict
    from onecard.switch.store.pg.connect import PgError

    expected = [(errors.ClearingError("x"), 422), (WorkerFailed("x"), 503),
                (DateError("x"), 400), (FutureDate("x"), 422),
                (CatalogueError("x"), 422), (NoApplication("x"), 404),
                (ApplicationExists("x"), 409), (CatalogueConflict("x"), 409),
                (BodyError(400, "x"), 400), (BodyError(422, "x"), 422),
                (Problem(418, "Teapot", "x"), 418), (PgError("x\ndetail"), 503)]
    for exc, status in expected:
        problem = problem_of(exc)
        assert problem is not None and problem.status == status, exc
    store = problem_of(PgError("connection refused\nIs the server running?"))
    assert store.headers == {"Retry-After": "5"}
    assert store.detail == "the store is unavailable: connection refused; retry"
    assert problem_of(errors.OnecardError("x")) is None          # unnamed: a 500, a bug
    assert problem_of(RuntimeError("x")) is None
    assert all(issubclass(cls, BaseException) for cls in PROBLEMS)
