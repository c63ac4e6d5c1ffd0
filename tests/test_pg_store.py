"""The PostgreSQL store, phase 1 (issue 14): schema, migrations, import of an embedded data
set, status, and the one-line errors; against a throwaway server of this test module's own."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from onecard.bench import pg_local
from onecard.switch import cli
from onecard.switch.store.pg.importer import journal_digest
from onecard.switch.store.pg.schema import MIGRATIONS, SCHEMA_VERSION, TABLES

from conftest import Supply, iso_session, start_switch
from pg_fixtures import dsn, pg, psycopg  # noqa: F401  (fixtures)


def onecard(*args: str, input_config: Path | None = None) -> subprocess.CompletedProcess:
    extra = ["--config", str(input_config)] if input_config else []
    return subprocess.run([sys.executable, "-m", "onecard.switch.cli", *args, *extra],
                          capture_output=True, text=True, timeout=120)


def sqlite_rows(data_dir: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{data_dir / 'onecard.db'}?mode=ro", uri=True)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        conn.close()


def sqlite_journal(data_dir: Path) -> list[tuple]:
    conn = sqlite3.connect(f"file:{data_dir / 'onecard.db'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT first_no, n, ts_us, records, format FROM journal "
                            "ORDER BY first_no").fetchall()
    finally:
        conn.close()


def pg_rows(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def test_migrate_twice_creates_the_schema_once_and_records_its_version(dsn, capsys):
    assert cli.main(["db", "migrate", "--dsn", dsn]) == 0
    applied = ", ".join(str(v) for v in sorted(MIGRATIONS))          # 4 (the base), then on
    assert (f"schema version {SCHEMA_VERSION} (applied {applied})"
            in capsys.readouterr().out)
    assert cli.main(["db", "migrate", "--dsn", dsn]) == 0
    assert "already current" in capsys.readouterr().out
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT value FROM meta").fetchall() == [(str(SCHEMA_VERSION),)]
        assert conn.execute("SELECT epoch, holder FROM lease").fetchall() == [(0, "")]
        with pytest.raises(psycopg.errors.UniqueViolation):      # one lease row at most
            conn.execute("INSERT INTO lease VALUES (1, 'x', now())")
    assert cli.main(["db", "status", "--dsn", dsn]) == 0
    out = capsys.readouterr().out
    assert f"schema version {SCHEMA_VERSION}; journal end 0; lease epoch 0" in out


def test_a_store_newer_than_the_build_is_refused_in_one_line(dsn, capsys):
    assert cli.main(["db", "migrate", "--dsn", dsn]) == 0
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    assert cli.main(["db", "migrate", "--dsn", dsn]) == 2
    err = capsys.readouterr().err
    assert "schema version 99, newer than this build's" in err and err.count("\n") == 1


def test_import_of_the_demo_data_set_keeps_every_row_and_its_ciphertext(dsn, demo_dir, capsys):
    assert cli.main(["db", "import", str(demo_dir), "--dsn", dsn]) == 0
    out = capsys.readouterr()
    want = sqlite_rows(demo_dir)
    assert pg_rows(dsn) == want
    assert want["cards"] > 0 and want["terminals"] > 0
    digest, end = journal_digest(sqlite_journal(demo_dir))
    assert f"sha256 {digest} equal on both sides" in out.out
    assert f"cards: {want['cards']:,} / {want['cards']:,} rows" in out.err    # progress
    src = sqlite3.connect(f"file:{demo_dir / 'onecard.db'}?mode=ro", uri=True)
    with psycopg.connect(dsn) as conn:
        # Still encrypted, byte for byte: the wrapped data key and the sealed card numbers.
        assert dict(conn.execute("SELECT key, value FROM meta").fetchall()) == dict(
            src.execute("SELECT key, value FROM meta").fetchall())
        assert conn.execute("SELECT idx, pan_hmac, pan_enc, holder_name FROM cards "
                            "ORDER BY idx LIMIT 50").fetchall() == src.execute(
            "SELECT idx, pan_hmac, pan_enc, holder_name FROM cards ORDER BY idx LIMIT 50"
        ).fetchall()
        assert conn.execute("SELECT tmk_wrapped FROM terminals ORDER BY idx").fetchall() == \
            src.execute("SELECT tmk_wrapped FROM terminals ORDER BY idx").fetchall()
    src.close()
    assert cli.main(["db", "status", "--dsn", dsn]) == 0
    status = capsys.readouterr().out
    assert f"journal end {end:,}" in status and "encrypted at rest" in status


@pytest.mark.slow
def test_journal_of_a_real_switch_is_imported_exactly_and_not_twice(dsn, demo_dir, terminals,
                                                                    tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    supply = Supply(demo_dir, terminals)
    sw = start_switch(data)
    try:
        sock, pos = iso_session(sw, supply.terminal("FIN-PAY", 31))
        pans = [supply.card(31) for _ in range(3)]
        for i in range(12):
            (reply,) = pos.send(pos.purchase(pans[i % 3], 100 + i))
            assert reply["39"] == "00"
        sock.close()
    finally:
        assert sw.stop() == 0
    journal = sqlite_journal(data)
    assert sum(row[1] for row in journal) >= 12

    assert cli.main(["db", "import", str(data), "--dsn", dsn]) == 0
    capsys.readouterr()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT first_no, n, ts_us, records, format FROM journal "
                            "ORDER BY first_no").fetchall() == journal
    assert pg_rows(dsn) == sqlite_rows(data)

    assert cli.main(["db", "import", str(data), "--dsn", dsn]) == 2    # not over a data set
    err = capsys.readouterr().err.strip()
    assert "already holds a data set" in err and "--replace" in err and "\n" not in err
    assert cli.main(["db", "import", str(data), "--dsn", dsn, "--replace"]) == 0
    assert "replaced" in capsys.readouterr().out
    assert pg_rows(dsn) == sqlite_rows(data)


def one_line_exit_2(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_unreachable_dsn_and_wrong_password_are_one_line_and_exit_2(pg):
    closed = f"host=127.0.0.1 port={pg_local.free_port()} user=postgres dbname=postgres"
    for command in ("migrate", "status", "import"):
        err = one_line_exit_2(onecard("db", command, "--dsn", closed))
        assert "cannot connect to PostgreSQL" in err and "refused" in err
    err = one_line_exit_2(onecard("db", "status", "--dsn", pg.dsn_for("postgres",
                                                                     password="wrong")))
    assert "password authentication failed" in err


def test_serve_on_an_empty_postgresql_store_says_to_migrate_and_generates_nothing(dsn,
                                                                                  tmp_path):
    config = tmp_path / "pg.toml"
    config.write_text(f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\n'
                      "require_sync_standby = false\n")
    err = one_line_exit_2(onecard("serve", "--data-dir", str(tmp_path / "local"),
                                  input_config=config))
    assert "run onecard db migrate" in err
    assert not (tmp_path / "local" / "onecard.db").exists()      # no demo data made
    assert cli.main(["db", "migrate", "--dsn", dsn]) == 0
    err = one_line_exit_2(onecard("serve", "--data-dir", str(tmp_path / "local"),
                                  input_config=config))
    assert "no data set in the PostgreSQL store" in err and "onecard db import" in err
    config.write_text('[store]\nbackend = "postgresql"\n')
    assert "needs dsn" in one_line_exit_2(onecard("serve", input_config=config))


def test_dsn_comes_from_the_configuration(dsn, tmp_path, capsys):
    config = tmp_path / "pg.toml"
    config.write_text(f'[store]\ndsn = "{dsn}"\n')
    assert cli.main(["db", "migrate", "--config", str(config)]) == 0
    assert "applied" in capsys.readouterr().out
    config.write_text("")
    assert cli.main(["db", "status", "--config", str(config)]) == 2
    assert "no PostgreSQL DSN" in capsys.readouterr().err
