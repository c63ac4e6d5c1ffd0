"""Data-key rotation (issue 28, switch/store/rotate_dek.py, docs/operations.md "Rotating
the data key"): ``onecard keys rotate-dek`` with the switch stopped gives the data set a new
data key; everything sealed at rest is sealed again under it and the card-number index is
recomputed, while journal records keep the key of their generation. Afterwards the switch
serves as before (purchases over TCP, card views, Verify, disbursements' idempotency), a
replay over both generations gives the switch's state, clearing runs; and an old copy of the
database with the KEK opens nothing written after the rotation. A rotation killed at any
point leaves the old key set or the new one whole."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from onecard.core import crypto
from onecard.core.state import KIND_CARD_ADMIN
from onecard.protocols import journal_codec, native
from onecard.switch import cli
from onecard.switch.security import holders_file, keystore
from onecard.switch.store import chain, dataset, loader, rotate_dek, snapshots, sqlite, staged
from onecard.switch.terminals import read_terminals

from conftest import (
    TOKENS,
    AdminClient,
    Supply,
    iso_balance,
    iso_session,
    native_session,
    start_switch,
)

pytestmark = pytest.mark.slow
ARRAYS = ("cards", "accounts", "terminals", "ring", "deny_log")


def rotate(data: Path, *extra: str) -> int:
    return cli.main(["keys", "rotate-dek", "--data-dir", str(data), *extra])


def disburse(api: AdminClient, pan: str, fen: int) -> str:
    r = api.post("/admin/disbursements", {"programme": "PENSION", "period": "2026-11",
                                          "items": [{"card": pan, "amount_fen": fen}]},
                 role="finance")
    assert r.status == 200, r.text
    return r.json()["items"][0]["result"]


def assert_same_state(got, want) -> None:
    a, b = got.snapshot(), want.snapshot()
    assert set(a) == set(b)
    for name in sorted(set(a) - set(chain.NOT_WRITTEN)):   # not state: a process's mark
        if name in ARRAYS:
            assert a[name].tobytes() == b[name].tobytes(), name
        else:
            rows = lambda arr: sorted(r.tobytes() for r in np.atleast_1d(arr))  # noqa: E731
            assert rows(a[name]) == rows(b[name]), name


@dataclass
class History:
    """A data set used by a switch, rotated, used again; with a copy from before."""

    data: Path
    old: Path                   # the data directory as it was just before the rotation
    supply: Supply
    paid: str                   # disbursed to before the rotation
    before: str                 # issued (replace) before the rotation
    after: str                  # issued (replace) after the rotation
    after_no: int               # its CARD_ADMIN record
    balances: dict[str, int]    # after everything


@pytest.fixture(scope="module")
def history(demo_dir, terminals, tmp_path_factory) -> History:
    supply = Supply(demo_dir, terminals)
    data = tmp_path_factory.mktemp("rotated") / "data"
    shutil.copytree(demo_dir, data)
    paid, replaced, again = supply.card(31), supply.card(31), supply.card(31)
    sw = start_switch(data)
    try:
        api = AdminClient(sw)
        assert disburse(api, paid, 1_234) == "00"
        r = api.post(f"/admin/cards/{replaced}/replace")
        assert r.status == 201, r.text
        before = r.json()["card_number"]
        sock, pos = iso_session(sw, supply.terminal("FIN-PAY", 31))
        assert pos.send(pos.purchase(before, 150))[0]["39"] == "00"
        sock.close()
    finally:
        sw.stop()
    old = data.parent / "old-copy"
    shutil.copytree(data, old)
    assert rotate(data) == 0

    sw = start_switch(data)
    try:
        api = AdminClient(sw)
        assert disburse(api, paid, 1_234) == "94"          # the recomputed index finds it
        r = api.post(f"/admin/cards/{again}/replace")
        assert r.status == 201, r.text
        after = r.json()["card_number"]
        sock, pos = iso_session(sw, supply.terminal("FIN-PAY", 31))
        assert [pos.send(pos.purchase(c, 100))[0]["39"] for c in (before, after, paid)] == [
            "00", "00", "00"]
        balances = {c: iso_balance(pos, c) for c in (before, after, paid)}
        sock.close()
        assert api.view(before)["status"] == "active"
        assert api.view(replaced)["status"] == "replaced"
        assert api.view(after)["balance_fen"] == balances[after]
    finally:
        sw.stop()
    conn = sqlite.connect(sqlite.db_path(data), readonly=True)
    try:
        recs, nos = sqlite.journal_records(conn)
    finally:
        conn.close()
    admin = recs["kind"] == KIND_CARD_ADMIN
    from_no = dataset.for_data_dir(data).from_no
    assert (nos[admin] < from_no).any() and (nos[admin] >= from_no).any()
    # a replacement journals the new card (appended: the highest index) and the old one's
    # status; the new card's record
    after_no = int(nos[admin][np.argmax(recs["card"][admin])])
    return History(data, old, supply, paid, before, after, after_no, balances)


def test_the_switch_serves_after_a_rotation_with_holders_and_keys(history, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(history.data, data)
    TOKENS[str(data)] = TOKENS[str(history.data)]          # the copy's operators file
    sw = start_switch(data)
    try:
        api = AdminClient(sw)
        for card in (history.before, history.after, history.paid):
            assert api.view(card)["balance_fen"] == history.balances[card]
        sock, pos = iso_session(sw, history.supply.terminal("FIN-PAY", 31))
        assert pos.send(pos.purchase(history.after, 10))[0]["39"] == "00"
        sock.close()
        sock, verifier = native_session(sw, history.supply.terminal("ID-VERIFY", 31))
        world = history.supply.world
        idx = int(np.flatnonzero(world.state.cards["pan"] == int(history.paid))[0])
        (r,) = verifier.send([verifier.verify(history.paid)])
        assert isinstance(r, native.VerifyReply) and r.rc == "00"
        assert r.name[0] == world.names[idx][0] and r.name.endswith("*")
        (r,) = verifier.send([verifier.verify(history.after)])   # issued after: same holder
        assert isinstance(r, native.VerifyReply) and r.rc == "00" and r.name.endswith("*")
        sock.close()
    finally:
        sw.stop()


def test_a_replay_over_both_generations_gives_the_switchs_state(history, tmp_path, demo_dir):
    """The demo's checkpoint (sealed under the new key) plus every journal record, those
    enciphered under the old key and under the new, equals the newest checkpoint plus its
    tail."""
    full = tmp_path / "full"
    shutil.copytree(history.data, full)
    upto, arrays = snapshots.latest(demo_dir, dataset.for_data_dir(demo_dir))
    shutil.rmtree(snapshots.snapshot_root(full))
    snapshots.write(full, arrays, upto, dataset.for_data_dir(full))
    replayed = loader.load(full)
    assert replayed.replayed > 0 and replayed.keys.earlier
    assert_same_state(replayed.state, loader.load(history.data).state)
    assert int(replayed.state.cards["pan"][replayed.state.n_cards - 1]) == int(history.after)


def test_clearing_of_the_day_runs_after_a_rotation(history, tmp_path, capsys):
    import datetime as dt

    from onecard.protocols import clearing

    now_us = np.array([dt.datetime.now(dt.UTC).timestamp() * 1e6], dtype=np.int64)
    date = clearing.day_date(clearing.settlement_days(now_us, 23 * 60)[0]).isoformat()
    assert cli.main(["clearing", "run", "--data-dir", str(history.data), "--date", date]) == 0
    assert f"settlement date {date}" in capsys.readouterr().out


def test_an_old_copy_and_the_kek_open_nothing_written_after(history):
    old = dataset.for_data_dir(history.old)
    new = dataset.for_data_dir(history.data)
    assert (new.generation, old.generation) == (1, 0) and new.dek != old.dek
    with pytest.raises(keystore.KekError):
        holders_file.open_vault(history.data / loader.HOLDERS_FILE, old)
    assert holders_file.open_vault(history.data / loader.HOLDERS_FILE, new).n_records
    with pytest.raises(keystore.KekError):
        snapshots.latest(history.data, old)                 # the checkpoints
    conn = sqlite3.connect(sqlite.db_path(history.data))
    try:
        tid, tmk = conn.execute("SELECT tid, tmk_wrapped FROM terminals LIMIT 1").fetchone()
        with pytest.raises(keystore.KekError):
            old.unwrap_tmk(tid, tmk)
        assert len(new.unwrap_tmk(tid, tmk)) == 16
        idx, hmac_, pan_enc = conn.execute(
            "SELECT idx, pan_hmac, pan_enc FROM cards ORDER BY idx DESC LIMIT 1").fetchone()
        with pytest.raises(keystore.KekError):
            old.open_text("cards", "pan", idx, pan_enc)
        assert new.open_text("cards", "pan", idx, pan_enc) == history.after
        assert hmac_ == new.pan_hmac(history.after) != old.pan_hmac(history.after)
        hmacs = {h for (h,) in conn.execute("SELECT pan_hmac FROM cards")}
        assert old.pan_hmac(history.paid) not in hmacs
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    finally:
        conn.close()
    # The card issued after the rotation: its journal record opens with the new journal key
    # only; the old generation's key is kept (wrapped under the KEK), the old DEK is not.
    conn = sqlite.connect(sqlite.db_path(history.data), readonly=True)
    try:
        recs, _ = sqlite.journal_records(conn, history.after_no)
    finally:
        conn.close()
    r = journal_codec.view(recs[:1], "card_admin")[0]
    args = (int(r["pan"]), int(r["card"]), int(r["account"]))
    assert crypto.pan_crypt(new.journal_key_at(history.after_no), *args, decrypt=True) == \
        int(history.after)
    assert crypto.pan_crypt(old.journal_key, *args, decrypt=True) != int(history.after)
    assert [g.key for g in new.earlier] == [old.journal_key]
    assert {"dek_generation", "dek_from_no", "journal_key_0"} <= set(meta)
    assert not any(old.dek.hex() in v for v in meta.values())
    # and the old copy itself still opens with the KEK (what it held stays readable)
    loader.load(history.old)


def test_a_running_switch_keeps_its_data_key(demo_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    sw = start_switch(data)
    try:
        assert rotate(data) == 2
        err = capsys.readouterr().err
        assert "in use" in err and err.count("\n") == 1
    finally:
        sw.stop()
    assert dataset.for_data_dir(data).generation == 0


def test_rotating_again_and_the_kek_after_keep_every_generation(history, tmp_path, capsys,
                                                                monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(history.data, data)
    want = loader.load(data).state
    assert rotate(data) == 0
    out = capsys.readouterr().out
    assert "generation 2" in out and len(out.splitlines()) == 2
    new_kek = tmp_path / "new.kek"
    assert cli.main(["keys", "rotate-kek", "--data-dir", str(data), "--new-kek-file",
                     str(new_kek)]) == 0
    monkeypatch.delenv(keystore.ENV_KEK)
    keys = dataset.for_data_dir(data, str(new_kek))
    assert keys.generation == 2 and [g.generation for g in keys.earlier] == [0, 1]
    assert_same_state(loader.load(data, kek_file=str(new_kek)).state, want)
    audit = sqlite3.connect(sqlite.db_path(data)).execute(
        "SELECT action, details FROM admin_log WHERE role = 'keys'").fetchall()
    assert [a for a, _ in audit] == ["rotate data key"] * 2
    assert all(keys.dek.hex() not in d for _, d in audit)


def test_a_part_split_after_a_rotation_has_only_the_current_key(history, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(history.data, src)
    dst = tmp_path / "part"
    assert cli.main(["region", "split", "--data-dir", str(src), "--owns", "31",
                     "--to", str(dst)]) == 0
    keys = dataset.for_data_dir(dst)
    assert (keys.generation, keys.from_no, keys.earlier) == (1, 0, ())
    loader.load(dst)


# ---- crash safety ----------------------------------------------------------------------------

# Run in a process of its own and killed (SIGKILL: no cleanup, no rollback) at one point.
CRASH = """
import os, signal, sys
from onecard.switch import cli
from onecard.switch.security import sealed_files
from onecard.switch.store import rotate_dek

point, calls = sys.argv[2], [0]

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

def counted(real, at):
    def call(*a, **k):
        calls[0] += 1
        if calls[0] == at:
            kill()
        return real(*a, **k)
    return call

if point == "staging":                # the third sealed file half way through its staging
    sealed_files.write_sealed = counted(sealed_files.write_sealed, 3)
elif point == "before-commit":
    rotate_dek._commit = lambda *a: kill()
elif point == "after-commit":         # committed, no staged file renamed yet
    real = rotate_dek.finish_pending
    rotate_dek.finish_pending = lambda d, g=None, **k: kill() if g == 1 else real(d, g, **k)
elif point == "renaming":             # committed, two staged files renamed
    os.replace = counted(os.replace, 3)
sys.exit(cli.main(["keys", "rotate-dek", "--data-dir", sys.argv[1]]))
"""


@pytest.mark.parametrize("point,committed", [("staging", False), ("before-commit", False),
                                             ("after-commit", True), ("renaming", True)])
def test_a_rotation_killed_half_way_leaves_one_whole_key_set(demo_dir, tmp_path, point,
                                                             committed):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    want = loader.load(data).state
    proc = subprocess.run([sys.executable, "-c", CRASH, str(data), point], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert dataset.for_data_dir(data).generation == int(committed)
    assert list(staged.staged_files(data))  # sealed under the new key, not in place
    loaded = loader.load(data)                   # finishes a committed rotation
    assert bool(list(staged.staged_files(data))) == (not committed)    # left: unread
    assert_same_state(loaded.state, want)
    assert rotate(data) == 0                     # and the next rotation goes through
    assert not list(staged.staged_files(data))
    assert dataset.for_data_dir(data).generation == int(committed) + 1
    assert_same_state(loader.load(data).state, want)


def test_a_backup_after_an_interrupted_rotation_restores(demo_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    want = loader.load(data).state
    proc = subprocess.run([sys.executable, "-c", CRASH, str(data), "after-commit"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert cli.main(["backup", "--data-dir", str(data), "--to", str(tmp_path / "b")]) == 0
    assert cli.main(["restore", "--from", str(tmp_path / "b"), "--data-dir",
                     str(tmp_path / "r")]) == 0
    assert_same_state(loader.load(tmp_path / "r").state, want)


# ---- the PostgreSQL store --------------------------------------------------------------------

def test_the_postgresql_store_rotates_in_one_transaction(demo_dir, tmp_path, pg_server, capsys):
    from conftest import on_postgresql, store_config

    supply = Supply(demo_dir, read_terminals(demo_dir))
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    dsn = on_postgresql(data, pg_server, "dek_rotation")
    config = tmp_path / "pg.toml"
    config.write_text(store_config(data))
    replaced = supply.card(31)
    capsys.readouterr()                        # the import's progress
    sw = start_switch(data)
    try:
        r = AdminClient(sw).post(f"/admin/cards/{replaced}/replace")
        assert r.status == 201, r.text
        before = r.json()["card_number"]
        assert rotate(data, "--config", str(config)) == 2       # a switch is connected
        err = capsys.readouterr().err
        assert "other onecard connections" in err and err.count("\n") == 1
    finally:
        sw.stop()
    old = dataset.for_data_dir(data)          # the SQLite copy: the imported data key
    assert rotate(data, "--config", str(config)) == 0
    assert "generation 1" in capsys.readouterr().out
    sw = start_switch(data)
    try:
        sock, pos = iso_session(sw, supply.terminal("FIN-PAY", 31))
        assert [pos.send(pos.purchase(c, 100))[0]["39"] for c in (before, supply.card(31))] == [
            "00", "00"]
        sock.close()
        assert AdminClient(sw).view(before)["status"] == "active"
    finally:
        sw.stop()
    from onecard.switch.store.pg.checkpoints import latest
    from onecard.switch.store.pg.connect import connect
    from onecard.switch.store.pg.db import Db

    pg = connect(dsn, autocommit=True)
    try:
        new = keystore.open_data_set(Db(pg), data)
        assert new.generation == 1 and new.dek != old.dek
        with pytest.raises(keystore.KekError):
            latest(pg, old)
        assert latest(pg, new) is not None
    finally:
        pg.close()


# ---- disbursement rows ------------------------------------------------------------------------

def test_a_disbursement_row_of_a_card_without_its_row_is_rekeyed_from_the_state(history,
                                                                                 tmp_path):
    data = tmp_path / "data"
    shutil.copytree(history.data, data)
    old = dataset.for_data_dir(data)
    conn = sqlite3.connect(sqlite.db_path(data), isolation_level=None)
    conn.execute("DELETE FROM cards WHERE pan_hmac = ?", (old.pan_hmac(history.paid),))
    conn.close()
    assert rotate(data) == 0
    new = dataset.for_data_dir(data)
    conn = sqlite3.connect(sqlite.db_path(data))
    (hmac_,) = conn.execute("SELECT DISTINCT pan_hmac FROM disbursements").fetchone()
    conn.close()
    assert hmac_ == new.pan_hmac(history.paid)


def test_a_failure_inside_the_transaction_changes_nothing(history, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(history.data, data)
    conn = sqlite3.connect(sqlite.db_path(data), isolation_level=None)
    conn.execute("INSERT INTO disbursements SELECT programme, period + 1, ?, card, amount_fen, "
                 "result, record_no, operator, at FROM disbursements", (b"\1" * 32,))
    conn.close()
    want = loader.load(data).state
    files = {p: p.read_bytes() for p, _ in rotate_dek.sealed_paths(data)}
    assert rotate(data) == 2
    err = capsys.readouterr().err
    assert "1 disbursement rows name a card" in err and err.count("\n") == 1
    assert dataset.for_data_dir(data).generation == 1
    assert {p: p.read_bytes() for p, _ in rotate_dek.sealed_paths(data)} == files
    assert not list(staged.staged_files(data))
    assert_same_state(loader.load(data).state, want)
