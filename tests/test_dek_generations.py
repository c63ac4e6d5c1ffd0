"""The data key's generations (switch/security/keystore.py, journal_generations.py): which
journal key enciphered a record, how a rotation's meta rows are wrapped and bound, and the
records replay is handed after a rotation (every kind whose card number is enciphered)."""

from __future__ import annotations

import os
import sqlite3

import numpy as np
import pytest

from onecard.core import crypto
from onecard.core.state import KIND_CARD_ADMIN, KIND_FOREIGN_DENY, KIND_FORWARDED
from onecard.protocols import forward, journal_codec
from onecard.switch.security import journal_generations, keystore
from onecard.switch.security.keystore import DataKeys

KEK = bytes(range(32))
NONE32 = 0xFFFFFFFF
PAN = 6213110000000012345


def rotated_twice() -> tuple[DataKeys, DataKeys, DataKeys, dict[str, str]]:
    """Generation 0 for records 0-9, 1 for 10-19, 2 from 20 on; the meta rows written."""
    g0 = DataKeys(os.urandom(32))
    g1, rows = keystore.rotated(KEK, g0, 10)
    g2, more = keystore.rotated(KEK, g1, 20)
    return g0, g1, g2, {**rows, **more}


def test_each_record_number_has_its_generations_journal_key():
    g0, g1, g2, _ = rotated_twice()
    assert [g2.journal_key_at(n) for n in (0, 9, 10, 19, 20, 10**9)] == [
        g0.journal_key, g0.journal_key, g1.journal_key, g1.journal_key, g2.journal_key,
        g2.journal_key]
    # a rotation before any record under the current key keeps no key for an empty range
    g3, rows = keystore.rotated(KEK, g2, 20)
    assert [g.generation for g in g3.earlier] == [0, 1] and "journal_key_2" not in rows
    assert "hidden" in repr(g3) and g3.dek.hex() not in repr(g3.earlier)


def meta_db(rows: dict[str, str]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    keystore.write_meta(conn, {**rows, "kek_check": keystore._check_value(KEK)})
    return conn


def test_the_meta_rows_open_with_the_kek_and_bind_each_boundary(monkeypatch, tmp_path):
    monkeypatch.setenv(keystore.ENV_KEK, KEK.hex())
    g0, g1, g2, rows = rotated_twice()
    opened = keystore.open_data_set(meta_db(rows), tmp_path)
    assert (opened.dek, opened.generation, opened.from_no) == (g2.dek, 2, 20)
    assert [(g.generation, g.from_no, g.key) for g in opened.earlier] == [
        (0, 0, g0.journal_key), (1, 10, g1.journal_key)]
    assert not any(g0.dek.hex() in v or g1.dek.hex() in v for v in rows.values())
    # a boundary moved (records read under the wrong key) does not unwrap
    wrapped = rows["journal_key_1"].partition(":")[2]
    with pytest.raises(keystore.KekError, match="journal_key_1 is damaged"):
        keystore.open_data_set(meta_db({**rows, "journal_key_1": f"12:{wrapped}"}), tmp_path)


def test_a_part_with_a_journal_of_its_own_keeps_only_the_current_key(monkeypatch, tmp_path):
    monkeypatch.setenv(keystore.ENV_KEK, KEK.hex())
    _, _, g2, rows = rotated_twice()
    part = keystore.open_data_set(meta_db(keystore.own_journal_meta(rows)), tmp_path)
    assert (part.dek, part.generation, part.from_no, part.earlier) == (g2.dek, 2, 0, ())


def records(keys: DataKeys, first_no: int) -> np.ndarray:
    """One record of each kind with a card number, each enciphered as the core writes it
    under the key of its number, and one FORWARDED carrying an issuer's record number."""
    recs = np.zeros(5, dtype=journal_codec.RECORD_DTYPE)
    recs["kind"] = [KIND_CARD_ADMIN, KIND_FORWARDED, KIND_FOREIGN_DENY, KIND_FORWARDED,
                    KIND_CARD_ADMIN]
    recs["card"], recs["account"] = NONE32, NONE32
    recs["card"][[0, 4]], recs["account"][[0, 4]] = 7, 9
    admin = journal_codec.view(recs, "card_admin")
    fwd = journal_codec.view(recs, "forwarded")
    deny = journal_codec.view(recs, "foreign_deny")
    key = [keys.journal_key_at(first_no + i) for i in range(5)]
    admin["pan"][0] = crypto.pan_crypt(key[0], PAN, 7, 9)
    fwd["origin"][1], fwd["rc"][1] = forward.ORIGIN["STAND_IN"], 0
    fwd["issuer_record_no"][1] = crypto.pan_crypt(key[1], PAN, NONE32, NONE32)
    deny["pan"][2] = crypto.pan_crypt(key[2], PAN, NONE32, NONE32)
    fwd["origin"][3], fwd["issuer_record_no"][3] = forward.ORIGIN["ISSUER"], 4242
    admin["pan"][4] = crypto.pan_crypt(key[4], PAN, 7, 9)
    return recs


@pytest.mark.parametrize("first_no", [0, 7, 8, 10, 12, 18])   # rows across each boundary
def test_replay_gets_every_enciphered_number_under_the_current_key(first_no):
    _, _, g2, _ = rotated_twice()
    blob = records(g2, first_no).tobytes()
    got = journal_codec.unpack(journal_generations.current(g2, blob, first_no))
    want = records(DataKeys(g2.dek), first_no)     # as if the current key wrote them all
    assert got.tobytes() == want.tobytes()


def test_rows_after_the_rotation_are_handed_over_as_they_are():
    _, _, g2, _ = rotated_twice()
    blob = records(g2, 20).tobytes()
    assert journal_generations.current(g2, blob, 20) is blob
    assert journal_generations.current(DataKeys(os.urandom(32)), blob, 0) is blob
