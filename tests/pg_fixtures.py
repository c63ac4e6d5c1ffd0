"""A throwaway PostgreSQL server per test module and a fresh database per test (import the
fixtures into a test module: ``from pg_fixtures import pg, dsn``)."""

from __future__ import annotations

import pytest

from onecard.bench import pg_local

psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL store's tests need psycopg 3")
if pg_local.bin_dir() is None:
    pytest.skip("no PostgreSQL server installed (/usr/lib/postgresql/*/bin/initdb; .ci/run "
                "installs Debian's postgresql)", allow_module_level=True)


@pytest.fixture(scope="module")
def pg():
    server = pg_local.start(durable=False)
    yield server
    server.stop()


@pytest.fixture
def dsn(pg, request) -> str:
    """A fresh database of its own for each test."""
    name = request.node.name.lower()[:40].replace("[", "_").replace("]", "")
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg.dsn_for(name)
