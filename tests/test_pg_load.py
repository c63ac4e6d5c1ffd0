"""Starting from, and running the admin queries on, the PostgreSQL store: the import of a data
set's checkpoint and holders file, the loader (equal to SQLite's), checkpoints written while
running, the sqlite3-style adapter under the admin API's queries, and a journal gap; against
a throwaway server of this test module's own, a database per test."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from onecard.switch import catalogue, cli
from onecard.switch.admin import disbursements
from onecard.switch.config import Config, StoreConfig
from onecard.switch.store import backend, loader, snapshots
from onecard.switch.store.pg import checkpoints
from onecard.switch.store.pg.connect import PgError, connect
from onecard.switch.store.pg.db import Db, translate
from onecard.switch.store.pg.importer import import_data_set
from onecard.switch.store.pg.journal import JournalGap, journal_end, journal_rows

from conftest import AdminClient, Supply, iso_session, start_switch
from pg_fixtures import dsn, pg, psycopg  # noqa: F401  (fixtures)

COMPARED = ("cards", "accounts", "terminals", "regions")


@pytest.fixture(scope="module")
def replayed_dir(demo_dir, terminals, tmp_path_factory) -> Path:
    """A data set whose journal goes past its newest checkpoint: a switch paid and
    disbursed, then was killed before it could write a checkpoint at stop."""
    data = tmp_path_factory.mktemp("replayed") / "data"
    shutil.copytree(demo_dir, data)
    supply = Supply(demo_dir, terminals)
    sw = start_switch(data)
    try:
        sock, pos = iso_session(sw, supply.terminal("FIN-PAY", 31))
        for i in range(9):
            (reply,) = pos.send(pos.purchase(supply.card(31), 100 + i))
            assert reply["39"] == "00"
        sock.close()
        reply = AdminClient(sw).post("/admin/disbursements", {
            "programme": "PENSION", "period": "2025-01",
            "items": [{"card": supply.card(32), "amount_fen": 1000 + i} for i in range(3)]},
            role="finance")
        assert reply.status == 200 and reply.json()["credited"] == 3, reply.text
    finally:
        sw.kill9()
    return data


def imported(data_dir: Path, dsn: str):
    with connect(dsn) as pg:
        return import_data_set(data_dir, pg)


def assert_same_state(a: loader.Loaded, b: loader.Loaded) -> None:
    for name in COMPARED:
        assert np.array_equal(getattr(a.state, name), getattr(b.state, name)), name
    assert (a.next_record_no, a.snapshot_upto, a.replayed) == (
        b.next_record_no, b.snapshot_upto, b.replayed)


# ---- import and load ---------------------------------------------------------------------------


def test_load_from_postgresql_equals_load_from_sqlite(replayed_dir, dsn):
    result = imported(replayed_dir, dsn)
    from_sqlite = loader.load(replayed_dir)
    assert from_sqlite.replayed >= 9 and from_sqlite.state.holders is not None
    assert result.checkpoint_upto == from_sqlite.snapshot_upto
    from_pg = loader.load(replayed_dir, dsn=dsn)
    assert_same_state(from_sqlite, from_pg)
    assert from_pg.migrated == []
    every = np.arange(from_sqlite.state.n_accounts, dtype=np.uint32)
    assert from_pg.state.holders.read_many(every) == from_sqlite.state.holders.read_many(every)
    assert from_pg.state.holders.stats()["cached_blocks"] == 0   # sealed, opened when read
    assert np.array_equal(from_pg.state.ring, from_sqlite.state.ring)


def test_load_without_a_data_dir_needs_only_the_key(replayed_dir, dsn, tmp_path):
    """The data set's directory is not read from: only the KEK ($ONECARD_KEK here)."""
    imported(replayed_dir, dsn)
    elsewhere = tmp_path / "nothing-here"
    assert_same_state(loader.load(replayed_dir), loader.load(elsewhere, dsn=dsn))
    assert not elsewhere.exists()


def test_import_copies_the_checkpoint_and_holders_as_sealed_bytes(demo_dir, dsn, capsys):
    assert cli.main(["db", "import", str(demo_dir), "--dsn", dsn]) == 0
    out = capsys.readouterr().out
    upto, path, names = snapshots.newest(demo_dir)
    assert f"checkpoint at record {upto:,}" in out and "sha256 equal" in out
    with connect(dsn) as pg:
        rows = dict(pg.execute("SELECT name, data FROM checkpoints WHERE upto = %s", (upto,)))
        assert sorted(rows) == sorted(names)
        for name in names:
            assert rows[name] == (path / f"{name}{snapshots.SEALED}").read_bytes()
        assert checkpoints.read_file(pg, "holders.bin") == (demo_dir / "holders.bin").read_bytes()
        keys = loader.load(demo_dir).keys
        got_upto, arrays = checkpoints.latest(pg, keys)
    want_upto, want = snapshots.latest(demo_dir, keys)
    assert got_upto == want_upto and sorted(arrays) == sorted(want)
    for name in want:
        assert np.array_equal(arrays[name], want[name]), name


def test_import_refuses_a_data_set_without_a_checkpoint(demo_dir, dsn, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    shutil.rmtree(snapshots.snapshot_root(data))
    assert cli.main(["db", "import", str(data), "--dsn", dsn]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint under" in err and err.count("\n") == 1
    with connect(dsn) as pg:                                 # nothing imported
        assert pg.execute("SELECT count(*) FROM cards").fetchone() == (0,)


def test_a_gap_in_the_journal_stops_the_load_with_the_records_missing(replayed_dir, dsn):
    imported(replayed_dir, dsn)
    with connect(dsn) as pg:
        rows = pg.execute("SELECT first_no, n FROM journal ORDER BY first_no").fetchall()
        upto = checkpoints.uptos(pg)[-1]
        after = [(f, n) for f, n in rows if f + n > upto]
        assert len(after) >= 3, "the switch's payments went into several rows"
        gone = after[1][0]
        pg.execute("DELETE FROM journal WHERE first_no = %s", (gone,))
    with pytest.raises(JournalGap, match=rf"records {gone} to {gone + after[1][1] - 1} are "
                       "missing"):
        loader.load(replayed_dir, dsn=dsn)
    with connect(dsn) as pg:                         # and between checkpoint and journal
        pg.execute("DELETE FROM journal WHERE first_no <= %s", (after[0][0],))
        with pytest.raises(JournalGap, match=rf"records {upto} to .* missing \(the checkpoint"):
            list(journal_rows(pg, upto))


def test_a_store_at_another_schema_version_is_refused_at_load(demo_dir, dsn):
    imported(demo_dir, dsn)
    with connect(dsn) as pg:
        pg.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    with pytest.raises(PgError, match="schema version 3, this build needs"):
        loader.load(demo_dir, dsn=dsn)


def test_journal_rows_outside_a_transaction_and_journal_end(replayed_dir, dsn):
    imported(replayed_dir, dsn)
    src = sqlite3.connect(f"file:{replayed_dir / 'onecard.db'}?mode=ro", uri=True)
    from onecard.switch.store import sqlite
    want = list(sqlite.journal_rows(src, 3)), sqlite.journal_end(src)
    src.close()
    with connect(dsn, autocommit=True) as pg:              # WITH HOLD: no transaction needed
        assert (list(journal_rows(pg, 3)), journal_end(pg)) == want


def test_disbursement_rows_are_rebuilt_from_the_postgresql_journal(replayed_dir, dsn):
    """sync_from_journal reads the journal through the adapter (sqlite.journal_records)."""
    imported(replayed_dir, dsn)
    columns = "programme, period, pan_hmac, card, amount_fen, result, record_no"
    src = sqlite3.connect(f"file:{replayed_dir / 'onecard.db'}?mode=ro", uri=True)
    want = src.execute(f"SELECT {columns} FROM disbursements ORDER BY record_no").fetchall()
    src.close()
    assert len(want) == 3
    loaded = loader.load(replayed_dir, dsn=dsn)
    config = Config(data_dir=str(replayed_dir), store=StoreConfig(backend="postgresql",
                                                                  dsn=dsn))
    db = backend.open_db(config)
    db.execute("DELETE FROM disbursements")
    db.execute("DELETE FROM meta WHERE key = ?", (disbursements.SYNC_KEY,))
    assert disbursements.sync_from_journal(db, loaded.keys, loaded.state.cards["pan"]) == 3
    got = db.execute(f"SELECT {columns} FROM disbursements ORDER BY record_no").fetchall()
    assert [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
            for row in got] == want
    assert disbursements.sync_from_journal(db, loaded.keys, loaded.state.cards["pan"]) == 0
    db.close()


# ---- checkpoints written while running ---------------------------------------------------------


def test_checkpointer_writes_to_postgresql_and_keeps_the_newest(demo_dir, dsn, tmp_path):
    imported(demo_dir, dsn)
    loaded = loader.load(demo_dir)
    arrays = {"cards": loaded.state.cards, "accounts": loaded.state.accounts}
    cp = snapshots.Checkpointer(tmp_path / "unused", None, 2, keys=loaded.keys, dsn=dsn)
    cp.start()
    base = loaded.next_record_no
    for step in (10, 20, 30):
        arrays["accounts"]["balance_fen"][0] = step              # a checkpoint of its own
        cp.submit(base + step, {k: v.copy() for k, v in arrays.items()})
        while cp.busy:
            cp.join(0.01)
        assert cp.last_upto == base + step
    cp.stop()
    cp.join(10)
    assert not cp.is_alive() and not (tmp_path / "unused").exists()
    with connect(dsn) as pg:
        assert checkpoints.uptos(pg) == [base + 20, base + 30]
        upto, got = checkpoints.latest(pg, loaded.keys)
        # Written again: nothing changes (a checkpoint is never half replaced).
        assert not checkpoints.write(pg, arrays, base + 30, loaded.keys)
    assert upto == base + 30 and sorted(got) == ["accounts", "cards"]
    for name in arrays:
        assert np.array_equal(got[name], arrays[name]), name


def test_checkpoint_fence_runs_in_its_transaction_and_can_refuse(demo_dir, dsn):
    imported(demo_dir, dsn)
    loaded = loader.load(demo_dir)

    def fenced(pg):
        raise PgError("lease lost")

    with connect(dsn, autocommit=True) as pg:
        with pytest.raises(PgError, match="lease lost"):
            checkpoints.write(pg, {"cards": loaded.state.cards}, 10**9, loaded.keys,
                              fence=fenced)
        assert 10**9 not in checkpoints.uptos(pg)


# ---- the adapter, and the admin queries on both stores -----------------------------------------


def test_translate_placeholders_percent_and_begin():
    assert translate("SELECT '5%' || ? FROM t WHERE a = ?") == \
        "SELECT '5%%' || %s FROM t WHERE a = %s"
    assert translate("BEGIN IMMEDIATE") == translate("begin") == "BEGIN"


def admin_scenario(config: Config, loaded: loader.Loaded) -> dict:
    """The admin API's queries, driven at the function level (HTTP needs a serving switch):
    what they answer, timestamps left out."""
    from aiohttp.test_utils import make_mocked_request

    from onecard.switch.admin.operators import Operator
    from onecard.switch.admin.routes import AdminApi, sync

    switch = SimpleNamespace(config=config, state=loaded.state, keys=loaded.keys,
                             data_dir=Path(config.data_dir), lease_epoch=None,
                             catalogue_listeners=[])
    api = AdminApi(switch, operators=None)
    op = Operator(name="alice", roles=["ops", "catalogue", "finance"])
    out: dict = {"synced": sync(switch)}
    db = api.db
    out["version"] = catalogue.change(db, "alice", "add", "X-PG", {
        "name_zh": "测试", "name_en": "Test", "domain": "sports", "scope": "province"})
    catalogue.change(db, "alice", "change", "X-PG", {"daily_limit_fen": 500})
    with pytest.raises(catalogue.CatalogueError):                    # rolled back
        catalogue.change(db, "alice", "change", "X-PG", {"scope": "nowhere"})
    catalogue.change(db, "alice", "retire", "X-PG", {})
    out["listing"] = catalogue.listing(db, region=31)
    out["built"] = [a.tobytes() for a in catalogue.build(db)]
    api.audit(op, "test.one", "x", {"n": 1})
    api.audit(op, "test.two", "y", {"n": 2}, 7)
    pans = loaded.state.cards["pan"][:5].astype(np.uint64)
    amounts = np.arange(1, 6, dtype=np.int64) * 100
    codes = np.array(["00", "00", "14", "00", "00"], dtype=object)
    nos = np.arange(100, 105, dtype=np.uint64)
    disbursements.record(db, loaded.keys, 0, 202501, pans, amounts, codes, nos, "alice")
    codes[2] = "00"                                     # paid later: the row is updated
    disbursements.record(db, loaded.keys, 0, 202501, pans[2:3], amounts[2:3], codes[2:3],
                         nos[2:3], "alice")
    out["paid"] = sorted(disbursements.already_paid(db, loaded.keys, 0, 202501, pans))
    out["totals"] = disbursements.totals(db)
    out["filing"] = db.execute("INSERT INTO filings VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                               (int(pans[0]), 31, "alice", "2025-01-01")).rowcount
    out["filing_again"] = db.execute("INSERT INTO filings VALUES (?,?,?,?) ON CONFLICT DO "
                                     "NOTHING", (int(pans[0]), 31, "alice", "x")).rowcount
    api._insert_card(0, loaded.state.n_cards, 6200000000000000003, 0, True)
    out["card"] = api.card_view(0)
    out["new_card"] = db.execute("SELECT idx, account, kind FROM cards WHERE idx = ?",
                                 (loaded.state.n_cards,)).fetchone()
    code = db.execute("SELECT code FROM programmes WHERE idx = 0").fetchone()[0]

    def answer(handler, path: str, **match: str):
        request = make_mocked_request("GET", path, match_info=match)
        reply = asyncio.run(handler(request, op)) if handler != api.public_catalogue else \
            asyncio.run(handler(request))
        return json.loads(reply.body)

    out["report"] = answer(api.disbursement_report, "/", programme=code, period="2025-01")
    out["history"] = answer(api.catalogue_history, "/")
    out["audit"] = answer(api.audit_log, "/admin/audit?limit=5")
    out["public"] = answer(api.public_catalogue, "/catalogue?region=31")
    db.close()
    return strip_times(out)


def strip_times(value):
    if isinstance(value, dict):
        return {k: strip_times(v) for k, v in value.items() if k != "at"}
    if isinstance(value, list):
        return [strip_times(v) for v in value]
    return value


def test_the_admin_queries_answer_the_same_on_both_stores(demo_dir, dsn, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    imported(data, dsn)
    on_sqlite = Config(data_dir=str(data))
    on_pg = Config(data_dir=str(data), store=StoreConfig(backend="postgresql", dsn=dsn))
    assert isinstance(backend.open_db(on_pg), Db)
    want = admin_scenario(on_sqlite, loader.load(data))
    got = admin_scenario(on_pg, loader.load(data, dsn=dsn))
    assert want["paid"] and want["totals"] and want["report"]["items"]
    assert len(want["audit"]) == 2 and want["history"][-1]["change"]["action"] == "retire"
    assert got == want


def test_a_failed_transaction_rolls_back_and_the_connection_serves_on(demo_dir, dsn):
    imported(demo_dir, dsn)
    config = Config(data_dir=str(demo_dir), store=StoreConfig(backend="postgresql", dsn=dsn))
    db = backend.open_db(config)
    with pytest.raises(psycopg.errors.UndefinedTable):
        with backend.transaction(db):
            db.execute("INSERT INTO filings VALUES (?,?,?,?)", (1, 31, "rolled-back", "x"))
            db.execute("INSERT INTO no_such_table VALUES (?)", (1,))
    assert db.execute("SELECT count(*) FROM filings WHERE operator = ?",
                      ("rolled-back",)).fetchone() == (0,)
    db.close()


def test_an_empty_store_is_no_data_set(dsn, tmp_path):
    assert cli.main(["db", "migrate", "--dsn", dsn]) == 0
    with pytest.raises(FileNotFoundError, match="no data set in the PostgreSQL store"):
        loader.load(tmp_path, dsn=dsn)


def test_an_array_past_the_bytea_limit_is_refused_in_one_line(demo_dir, dsn, monkeypatch):
    imported(demo_dir, dsn)
    loaded = loader.load(demo_dir)
    monkeypatch.setattr(checkpoints, "BYTEA_MAX", 1000)       # 1 GB stands for itself
    with connect(dsn) as pg:
        with pytest.raises(PgError, match=r"array cards is .* over PostgreSQL.s 1 GB limit"):
            checkpoints.write(pg, {"cards": loaded.state.cards}, 10**9, loaded.keys)
        assert 10**9 not in checkpoints.uptos(pg)
