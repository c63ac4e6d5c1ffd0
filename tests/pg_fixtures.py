"""The PostgreSQL store's test fixtures: the session's throwaway server (conftest.pg_server)
and a fresh database per test. A module imports them: ``from pg_fixtures import dsn, pg``."""

from __future__ import annotations

import re

import pytest

from onecard.bench import pg_local

psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL store's tests need psycopg 3")
if pg_local.bin_dir() is None:
    pytest.skip("no PostgreSQL server installed (/usr/lib/postgresql/*/bin/initdb; .ci/run "
                "installs Debian's postgresql)", allow_module_level=True)


@pytest.fixture
def pg(pg_server) -> pg_local.LocalServer:
    return pg_server


@pytest.fixture
def dsn(pg, request) -> str:
    """A fresh database of its own for each test."""
    name = re.sub(r"[^a-z0-9_]", "_", f"{request.module.__name__}_{request.node.name}".lower())
    name = name[:63]
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg.dsn_for(name)
