"""Holder records at rest and on read (issue 28, item 6): the holders file stays sealed in
blocks and a lodging verification opens only its holder's block, so a switch holds no holder
record in clear at start and at most [core] holder_cache_bytes of them after any number of
verifications; a damaged block refuses that verification (96, counted, logged), never
crashes and never answers another holder's data; data sets of the older formats (clear, or
sealed whole) still open, converted; and a real switch over TCP still answers name and
identity number.

Expected names and identity numbers come from the sealed ``cards`` table (World.holder),
never from the holders file the switch reads.
"""

from __future__ import annotations

import logging
import re
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from onecard.core.engine import NATIVE
from onecard.core.holders import RECORD_BYTES, HolderRecordError
from onecard.core.journal import unpack
from onecard.core.state import KIND_VERIFY
from onecard.protocols import native
from onecard.protocols.codes import CODE_INDEX
from onecard.switch import loader
from onecard.switch.security import holders_file, sealed_files
from onecard.switch.security.holders_file import HoldersFileError

from conftest import AdminClient, World, start_switch
from termsim import NativeTerminal, socket_exchange

SMALL_CACHE_BYTES = 16 * holders_file.BLOCK_RECORDS * RECORD_BYTES      # 16 blocks


def service_info(world: World, place: str, region_code: int = 310000):
    ((tid,),) = world.query("SELECT t.tid FROM terminals t JOIN regions r ON r.idx = "
                            "t.region_idx WHERE t.place = ? AND r.code = ? AND t.protocol = ? "
                            "ORDER BY t.idx LIMIT 1", place, region_code, NATIVE)
    return next(t for t in world.terminals if t.tid == tid)


def service(world: World, place: str) -> NativeTerminal:
    t = NativeTerminal(service_info(world, place), world.exchange(NATIVE))
    assert t.signon().rc == "00"
    return t


def one(t: NativeTerminal, message_type, *fields):
    (r,) = t.send([message_type(t.next_seq(), *fields)])
    return r


def account(world: World, idx: int) -> int:
    return int(world.state.cards["account"][idx])


def copy_of(demo_dir, tmp_path):
    path = tmp_path / "data"
    shutil.copytree(demo_dir, path)
    return path


def record_offset(account_no: int, k: int = holders_file.BLOCK_RECORDS) -> int:
    """Where an account's record's ciphertext is in the file (tests damage it there)."""
    block, at = divmod(account_no, k)
    return (holders_file.HEADER.size + block * (holders_file.SEAL_OVERHEAD_BYTES
                                                + k * RECORD_BYTES) + 12 + at * RECORD_BYTES)


def flip(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))


def _distinct(cards, key, count: int, taken=()) -> list[tuple[str, int]]:
    """The first ``count`` cards whose ``key`` no card before them (nor ``taken``) had."""
    chosen, seen = [], set(taken)
    for pan, idx in cards:
        if key(idx) not in seen:
            seen.add(key(idx))
            chosen.append((pan, idx))
        if len(chosen) == count:
            return chosen
    raise AssertionError("not enough cards")


def lodging_cards(world: World, count: int) -> list[tuple[str, int]]:
    """``count`` usable cards of the hotel's province, each of a different account."""
    return _distinct((world.card(31, nth=nth) for nth in range(10 * count)),
                     lambda idx: account(world, idx), count)


def block_of(world: World, idx: int) -> int:
    return account(world, idx) // holders_file.BLOCK_RECORDS


def cards_in_other_blocks(world: World, count: int) -> list[tuple[str, int]]:
    """Cards whose holders are in different blocks, none in block 0 (which a start opens)."""
    return _distinct(lodging_cards(world, 10 * count), lambda idx: block_of(world, idx), count,
                     taken={0})


def test_the_demo_data_set_holds_the_block_format(demo_dir):
    path = demo_dir / loader.HOLDERS_FILE
    assert holders_file.is_current(path)
    with open(path, "rb") as f:
        n, k = holders_file.parse_header(f.read(64), path.stat().st_size, str(path))
    assert k == holders_file.BLOCK_RECORDS and n >= 1
    assert path.stat().st_size == holders_file.sealed_bytes(n, k)


def test_nothing_is_decrypted_at_start_and_the_cache_stays_bounded(demo_dir, terminals):
    world = World(demo_dir, terminals, holder_cache_bytes=SMALL_CACHE_BYTES)
    vault = world.state.holders
    start = vault.stats()
    assert (start["cached_blocks"], start["clear_bytes"], start["hits"], start["misses"]) == (
        0, 0, 0, 0)
    assert start["cache_bytes"] == SMALL_CACHE_BYTES
    hotel = service(world, "hotel")
    cards = lodging_cards(world, 120)                  # far more blocks than the cache holds
    for pan, idx in cards:
        r = one(hotel, native.Verify, pan)
        assert (r.rc, r.name, r.id_number) == ("00", *world.holder(idx))
        st = vault.stats()
        assert st["clear_bytes"] <= SMALL_CACHE_BYTES and st["cached_blocks"] <= 16
    st = vault.stats()
    assert st["misses"] >= 100 and st["cached_blocks"] == 16
    pan, idx = cards[-1]                               # just opened: from the cache
    assert one(hotel, native.Verify, pan).name == world.holder(idx)[0]
    assert vault.stats()["hits"] == st["hits"] + 1
    report = world.state.memory_report()
    assert report["holder_bytes"] < 2 * SMALL_CACHE_BYTES + 4096
    vault.clear_cache()
    assert vault.stats()["clear_bytes"] == 0


def test_without_a_cache_every_block_is_wiped_once_read(demo_dir, terminals):
    world = World(demo_dir, terminals, holder_cache_bytes=0)
    hotel = service(world, "hotel")
    for pan, idx in lodging_cards(world, 5):
        assert one(hotel, native.Verify, pan).id_number == world.holder(idx)[1]
    st = world.state.holders.stats()
    assert (st["cache_slots"], st["clear_bytes"], st["hits"], st["misses"]) == (0, 0, 0, 5)


def test_default_scope_verifications_and_purchases_never_open_a_block(world):
    counter = service(world, "government counter")
    for pan, _ in lodging_cards(world, 20):
        assert one(counter, native.Verify, pan).rc == "00"
    assert world.state.holders.stats()["misses"] == 0


def test_every_holder_is_read_back_after_a_restart(demo_dir, terminals, tmp_path):
    data_dir = copy_of(demo_dir, tmp_path)
    first = World(data_dir, terminals)
    hotel = service(first, "hotel")
    pan, idx = lodging_cards(first, 1)[0]
    assert one(hotel, native.Verify, pan).name == first.holder(idx)[0]
    again = loader.load(data_dir).state                 # a restart: a new vault, nothing open
    assert again.holders.stats()["cached_blocks"] == 0
    cards = again.cards
    for card_idx in range(len(cards)):
        assert again.holder_of(int(cards["account"][card_idx])) == first.holder(card_idx)


def test_a_damaged_block_refuses_its_verifications_only(demo_dir, terminals, tmp_path, caplog):
    data_dir = copy_of(demo_dir, tmp_path)
    probe = World(demo_dir, terminals)
    (bad_pan, bad_idx), (good_pan, good_idx) = cards_in_other_blocks(probe, 2)
    flip(data_dir / loader.HOLDERS_FILE, record_offset(account(probe, bad_idx)))
    world = World(data_dir, terminals)                  # starts: only block 0 is checked
    hotel = service(world, "hotel")
    world.engine.journal.take()
    refused = one(hotel, native.Verify, bad_pan)
    assert (refused.rc, refused.name, refused.id_number) == ("96", "", "")
    again = one(hotel, native.Verify, bad_pan)          # a new request: refused again
    assert again.rc == "96"
    ok = one(hotel, native.Verify, good_pan)
    assert (ok.rc, ok.name, ok.id_number) == ("00", *world.holder(good_idx))
    recs = unpack(world.engine.journal.take()[1])
    verifies = recs[recs["kind"] == KIND_VERIFY]
    assert [int(r) for r in verifies["rc"]] == [CODE_INDEX["96"]] * 2 + [CODE_INDEX["00"]]
    vault = world.state.holders
    assert vault.failures == 2 and "does not authenticate" in vault.describe_failure()
    with pytest.raises(HolderRecordError, match="does not authenticate"):
        world.state.holder_of(account(world, bad_idx))
    caplog.set_level(logging.ERROR, logger="onecard.holders")
    watch = holders_file.FailureWatch(vault)
    watch.check()
    watch.check()                                       # nothing new: no second line
    lines = [r.getMessage() for r in caplog.records if r.name == "onecard.holders"]
    assert len(lines) == 1 and "3 holder record(s) refused" in lines[0]
    assert world.holder(bad_idx)[0] not in lines[0]


def test_a_changed_header_or_length_stops_the_start_in_one_line(demo_dir, tmp_path):
    data_dir = copy_of(demo_dir, tmp_path)
    path = data_dir / loader.HOLDERS_FILE
    flip(path, 30)                                      # the file id: every block's AAD
    with pytest.raises(HoldersFileError, match="first block does not open"):
        loader.load(data_dir)
    flip(path, 30)
    with open(path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(HoldersFileError, match="truncated or extended"):
        loader.load(data_dir)


def whole_records(world: World) -> bytes:
    return bytes(world.state.holders.read_many(
        np.arange(world.state.holders.n_records, dtype=np.uint32)))


def test_a_holders_file_sealed_whole_is_converted_at_start(demo_dir, terminals, tmp_path):
    """The format before this one (sealed_files, one AEAD stream in 4 MiB chunks)."""
    world = World(demo_dir, terminals)
    records = whole_records(world)
    data_dir = copy_of(demo_dir, tmp_path)
    path = data_dir / loader.HOLDERS_FILE
    sealed_files.write_sealed(path, records, world.keys, holders_file.OLD_LABEL)
    assert sealed_files.is_sealed(path) and not holders_file.is_current(path)
    loaded = loader.load(data_dir)
    assert holders_file.is_current(path)
    assert loaded.state.holders.stats()["cached_blocks"] == 0
    assert whole_records(World(data_dir, terminals)) == records
    _, idx = world.card(31)
    assert loaded.state.holder_of(account(world, idx)) == world.holder(idx)


def test_the_clear_holders_file_of_a_version_1_data_set_is_read_in_blocks(tmp_path):
    """The version-1 fixture (store schema 2: tables, checkpoint and holders.bin in clear)."""
    with tarfile.open(Path(__file__).parent / "fixtures" / "journal-v1.tar.xz") as tar:
        tar.extractall(tmp_path, filter="data")
    path = tmp_path / "data" / loader.HOLDERS_FILE
    clear = path.read_bytes()
    state = loader.load(tmp_path / "data").state
    assert holders_file.is_current(path) and clear[:RECORD_BYTES] not in path.read_bytes()
    assert state.holders.stats()["cached_blocks"] == 0
    for a in range(state.n_accounts):
        raw = clear[a * RECORD_BYTES:(a + 1) * RECORD_BYTES]
        assert state.holder_of(a) == (raw[:30].rstrip(b"\0").decode(),
                                      raw[30:].rstrip(b"\0").decode())


def test_older_formats_held_as_bytes_open_as_the_postgresql_store_holds_them(world):
    records = whole_records(world)
    old = sealed_files.seal_bytes(records, world.keys, holders_file.OLD_LABEL)
    new = (world.data_dir / loader.HOLDERS_FILE).read_bytes()
    for raw in (old, new):
        vault = holders_file.vault_of_bytes(raw, world.keys, where="holders.bin in a test")
        assert vault.stats()["cached_blocks"] == 0
        assert bytes(vault.read_many(np.arange(vault.n_records, dtype=np.uint32))) == records
    with pytest.raises(HoldersFileError, match="not sealed"):
        holders_file.vault_of_bytes(records, world.keys, where="clear bytes")


def test_a_clear_holders_file_is_sealed_in_blocks(world, tmp_path):
    """A data set from before encryption (the v1 fixture is one: tests/test_at_rest.py)."""
    records = whole_records(world)
    path = tmp_path / "holders.bin"
    path.write_bytes(records)
    assert holders_file.upgrade(path, world.keys)
    assert not holders_file.upgrade(path, world.keys)            # idempotent
    assert records[:RECORD_BYTES] not in path.read_bytes()
    vault = holders_file.open_vault(path, world.keys)
    assert bytes(vault.read_many(np.arange(vault.n_records, dtype=np.uint32))) == records


def test_block_sizes_and_record_counts_round_trip(world, tmp_path):
    """Any records per block, a last block short or whole, and a reseal (split, rotation)."""
    rng = np.random.default_rng(3)
    for n, k in ((1, 1), (5, 4), (8, 4), (1000, 16), (70_000, 3)):
        records = rng.integers(1, 255, size=n * RECORD_BYTES, dtype=np.uint8).tobytes()
        path = tmp_path / f"h-{n}-{k}.bin"
        holders_file.write(path, [records[:100], records[100:]], n, world.keys,
                           block_records=k)
        assert path.stat().st_size == holders_file.sealed_bytes(n, k)
        vault = holders_file.open_vault(path, world.keys, 4096)
        pick = rng.integers(0, n, size=50)
        for a in pick.tolist():
            assert vault.record_bytes(a) == records[a * RECORD_BYTES:(a + 1) * RECORD_BYTES]
        order = rng.permutation(n)[:max(n // 2, 1)]
        holders_file.reseal(tmp_path / "part.bin", vault, world.keys, order)
        part = holders_file.open_vault(tmp_path / "part.bin", world.keys)
        got = part.read_many(np.arange(part.n_records, dtype=np.uint32))
        want = b"".join(records[a * RECORD_BYTES:(a + 1) * RECORD_BYTES] for a in order.tolist())
        assert bytes(got) == want
    with pytest.raises(HoldersFileError, match="announced"):
        holders_file.write(tmp_path / "short.bin", [bytes(RECORD_BYTES)], 2, world.keys)


@pytest.mark.slow
def test_a_switch_over_tcp_answers_holders_opened_when_read(demo_dir, terminals, tmp_path):
    data_dir = copy_of(demo_dir, tmp_path)
    world = World(demo_dir, terminals)
    *cards, damaged = cards_in_other_blocks(world, 4)
    flip(data_dir / loader.HOLDERS_FILE, record_offset(account(world, damaged[1])))
    sw = start_switch(data_dir)
    api = AdminClient(sw)
    try:
        assert metric(api, "onecard_holder_clear_bytes") == 0
        sock, exchange = socket_exchange("127.0.0.1", sw.native, 4)
        try:
            hotel = NativeTerminal(service_info(world, "hotel", 310000), exchange)
            assert hotel.signon().rc == "00"
            for pan, idx in cards:
                (r,) = hotel.send([hotel.verify(pan)])
                assert (r.rc, r.name, r.id_number) == ("00", *world.holder(idx))
            (bad,) = hotel.send([hotel.verify(damaged[0])])
            assert (bad.rc, bad.name, bad.id_number) == ("96", "", "")
        finally:
            sock.close()
        assert 0 < metric(api, "onecard_holder_clear_bytes") <= holders_file.CACHE_BYTES_DEFAULT
        assert metric(api, 'onecard_holder_lookups_total{result="refused"}') == 1
        time.sleep(1.5)                 # the switch checks for refusals to log every second
    finally:
        sw.stop()
    log = sw.text()
    assert "holder_refused" in log and "1 holder record(s) refused" in log
    assert world.holder(damaged[1])[1] not in log


def metric(api: AdminClient, name: str) -> float:
    text = api.get("/metrics", role=None).text
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, name
    return float(m.group(1))
