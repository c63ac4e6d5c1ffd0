"""``onecard backup`` / ``onecard restore`` on the embedded store (switch/store/backup.py): a backup
taken while a switch commits purchases (and writes checkpoints every second) restores into a
new directory that loads to exactly the state of a committed prefix of the journal; damaged
backups, non-empty targets, a running switch and a missing key-encryption key are refused; a
backup's manifest is authenticated (HMAC-SHA256 under a key derived from the KEK): a changed
file or manifest, a removed HMAC and a wrong KEK are refused with the data directory as it
was (issue 28)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from onecard.core.ledger import apply_records
from onecard.core.state import KIND_PURCHASE
from onecard.switch import cli
from onecard.switch.commands import common
from onecard.switch.security import keystore
from onecard.switch.store import backup, dataset, loader, snapshots, sqlite

from checker import Load, committed_journal
from conftest import NO_SHEDDING, TEST_KEK, start_switch

LOAD_MAX_S = 90                    # every loop here is bounded
APPROVALS_BEFORE = 200
APPROVALS_AFTER = 100
WAIT_S = 30
# Arrays compared row for row; the maps (hash tables) are compared as sets of entries.
ARRAYS = ("cards", "accounts", "terminals", "ring", "deny_log")


def run_cli(*argv: str) -> int:
    return cli.main([*map(str, argv)])


def manifest_of(path: Path) -> dict:
    return json.loads((path / backup.MANIFEST).read_text())


def wait_for_checkpoint(data_dir: Path) -> int:
    """The upto of a checkpoint the running switch wrote (not the demo's), once there is one."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = snapshots.newest(data_dir)
        if found is not None and found[0] > 0:
            return found[0]
        time.sleep(0.1)
    raise AssertionError("the switch wrote no checkpoint")


def journal_prefix_state(demo_dir: Path, data_dir: Path, end: int):
    """The demo state with the data set's journal records below end applied: the state of
    that committed prefix, built without any checkpoint the switch wrote."""
    loaded = loader.load(demo_dir)
    conn = sqlite.connect(sqlite.db_path(data_dir), readonly=True)
    try:
        for first_no, blob in sqlite.journal_rows(conn, loaded.next_record_no):
            if first_no >= end:
                break
            assert first_no + len(blob) // 80 <= end, "the backup cut a commit in two"
            apply_records(loaded.state, blob, first_no, loaded.next_record_no)
    finally:
        conn.close()
    return loaded.state


def assert_same_state(got, want) -> None:
    a, b = got.snapshot(), want.snapshot()
    assert set(a) == set(b)
    for name in sorted(a):
        if name in ARRAYS:
            assert a[name].tobytes() == b[name].tobytes(), name
        else:
            rows = lambda arr: sorted(r.tobytes() for r in np.atleast_1d(arr))  # noqa: E731
            assert rows(a[name]) == rows(b[name]), name


def test_backup_under_load_restores_exactly_a_committed_prefix(switch_dir, demo_dir, world,
                                                               tmp_path):
    cfg = tmp_path / "checkpoint-every-second.toml"
    cfg.write_text(NO_SHEDDING + "[store]\ncheckpoint_interval_s = 1\n")
    sw = start_switch(switch_dir, "--config", str(cfg))
    cards = [world.card(nth=i)[0] for i in range(24)]
    load = Load(sw, world, cards, deadline_s=LOAD_MAX_S)
    bk = tmp_path / "backup"
    try:
        assert load.wait_for(APPROVALS_BEFORE, WAIT_S), "load did not get going"
        wait_for_checkpoint(switch_dir)
        assert run_cli("backup", "--data-dir", switch_dir, "--to", bk) == 0
        after = load.count()
        assert load.wait_for(after + APPROVALS_AFTER, WAIT_S), "load stopped during backup"
    finally:
        load.finish()
        assert sw.stop() == 0
    assert load.errors == 0
    manifest = manifest_of(bk)
    end, upto = manifest["journal_end"], manifest["checkpoint_upto"]
    assert 0 < upto <= end
    assert not list(bk.rglob("*.kek")) and not (bk / "onecard.lock").exists()

    restored = tmp_path / "restored"
    assert run_cli("restore", "--from", bk, "--data-dir", restored) == 0
    loaded = loader.load(restored)
    assert loaded.next_record_no == end and loaded.snapshot_upto == upto

    # The restored journal is the original's first `end` records, byte for byte, and the
    # original went on past it (the backup was taken under load).
    original, original_nos, _ = committed_journal(switch_dir)
    copy, copy_nos, tids = committed_journal(restored)
    assert np.array_equal(copy_nos, np.arange(end))
    assert copy.tobytes() == original[original_nos < end].tobytes()
    assert len(original) > end

    # The restored state (a checkpoint the switch wrote under load, plus replay) is the
    # state of that prefix replayed from the demo data alone.
    assert_same_state(loaded.state, journal_prefix_state(demo_dir, switch_dir, end))

    # Every purchase a terminal was told was approved, numbered below end, is in it.
    debited = (copy["kind"] == KIND_PURCHASE) & (copy["rc"] == 0)
    journaled = {(tids[int(r["terminal"])], int(r["seq"])): (int(r["amount_fen"]), int(no))
                 for r, no in zip(copy[debited], copy_nos[debited], strict=True)}
    before = [a for a in load.approved if int(a.rrn) < end]
    assert before and len(before) < len(load.approved)
    for a in before:
        assert journaled[(a.tid, a.stan)] == (a.amount_fen, int(a.rrn)), a


@pytest.mark.parametrize("when", ["pruned", "superseded"])
def test_a_checkpoint_published_while_copying_is_taken_instead(switch_dir, world, tmp_path,
                                                               monkeypatch, when):
    """The switch publishes a newer checkpoint while the backup copies one, and (pruned)
    deletes the one being copied before a file of it was opened, or (superseded) keeps it:
    either way the backup copies the newer one."""
    sw = start_switch(switch_dir)
    load = Load(sw, world, [world.card(nth=i)[0] for i in range(8)], terminals=2,
                deadline_s=LOAD_MAX_S)
    try:
        assert load.wait_for(APPROVALS_AFTER, WAIT_S), "load did not get going"
    finally:
        load.finish()
        assert sw.stop() == 0
    # The stop wrote a checkpoint at the journal's end: take it away, so that the backup
    # finds the demo's, and have it published again while that one is being copied.
    end, newest, _ = snapshots.newest(switch_dir)
    assert end == len(committed_journal(switch_dir)[1]) > 0
    shutil.rmtree(newest)
    state = loader.load(switch_dir).state
    keys = dataset.for_data_dir(switch_dir)
    copy_file, copied = backup._copy_file, []

    def publishing(src: Path, dst: Path, mode: int) -> dict:
        if when == "pruned" and not copied:
            snapshots.write(switch_dir, state.snapshot(), end, keys, keep=1)
        entry = copy_file(src, dst, mode)
        if when == "superseded" and not copied:
            snapshots.write(switch_dir, state.snapshot(), end, keys, keep=2)
        copied.append(src)
        return entry

    monkeypatch.setattr(backup, "_copy_file", publishing)
    lines: list[str] = []
    manifest = backup.backup(switch_dir, tmp_path / "bk", out=lines.append)
    assert manifest["checkpoint_upto"] == manifest["journal_end"] == end
    assert (when == "superseded") == any("superseded" in line for line in lines)
    restored = tmp_path / "restored"
    assert run_cli("restore", "--from", tmp_path / "bk", "--data-dir", restored) == 0
    loaded = loader.load(restored)
    assert (loaded.snapshot_upto, loaded.next_record_no, loaded.replayed) == (end, end, 0)


@pytest.fixture(scope="module")
def quiet_backup(demo_dir, tmp_path_factory) -> Path:
    """A backup of a copy of the demo data set (no switch running)."""
    root = tmp_path_factory.mktemp("quiet")
    shutil.copytree(demo_dir, root / "data")
    assert run_cli("backup", "--data-dir", root / "data", "--to", root / "backup") == 0
    return root / "backup"


def test_backup_keeps_modes_and_lists_every_file(quiet_backup):
    manifest = manifest_of(quiet_backup)
    files = manifest["files"]
    assert {"onecard.db", "holders.bin"} <= set(files)
    assert any(name.startswith("snapshots/snapshot-") for name in files)
    for name, entry in files.items():
        path = quiet_backup / name
        assert path.stat().st_size == entry["bytes"]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 == int(entry["mode"], 8), name
    assert stat.S_IMODE(quiet_backup.stat().st_mode) == 0o700


def test_a_long_database_copy_reports_progress(demo_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(backup, "STEP_PAGES", 16)
    monkeypatch.setattr(backup, "PROGRESS_EVERY_S", 0.0)
    lines: list[str] = []
    manifest = backup.backup(demo_dir, tmp_path / "bk", out=lines.append)
    pages = [line for line in lines if " pages (" in line]
    assert len(pages) > 2 and pages[-1].endswith("(100%)")
    assert manifest["files"]["onecard.db"]["bytes"] == (tmp_path / "bk" / "onecard.db"
                                                        ).stat().st_size


def test_backup_refuses_a_non_empty_target(demo_dir, tmp_path, capsys):
    target = tmp_path / "full"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    assert run_cli("backup", "--data-dir", demo_dir, "--to", target) == 2
    assert "not empty" in capsys.readouterr().err
    assert os.listdir(target) == ["keep.txt"]


def test_backup_and_restore_refuse_a_directory_inside_the_other(quiet_backup, tmp_path,
                                                                 capsys):
    data = tmp_path / "data"
    shutil.copytree(quiet_backup.parent / "data", data)
    assert run_cli("backup", "--data-dir", data, "--to", data / "backup") == 2
    assert run_cli("restore", "--from", quiet_backup, "--data-dir", quiet_backup,
                   "--force") == 2
    assert capsys.readouterr().err.count("must not contain one another") == 2
    assert not (data / "backup").exists()
    assert backup.read_manifest(quiet_backup)["files"]


def test_restore_refuses_a_damaged_backup_naming_the_file(quiet_backup, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(quiet_backup, damaged)
    victim = next((damaged / "snapshots").glob("snapshot-*/accounts.sealed"))
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    target = tmp_path / "restored"
    assert run_cli("restore", "--from", damaged, "--data-dir", target) == 2
    err = capsys.readouterr().err
    assert "damaged or changed" in err and "accounts.sealed" in err
    assert not target.exists()             # nothing restored, not even the directory


def test_restore_refuses_a_non_empty_target_unless_forced(quiet_backup, tmp_path, capsys):
    target = tmp_path / "existing"
    target.mkdir()
    (target / "old.txt").write_text("old data")
    assert run_cli("restore", "--from", quiet_backup, "--data-dir", target) == 2
    assert "not empty" in capsys.readouterr().err
    assert (target / "old.txt").read_text() == "old data"
    assert run_cli("restore", "--from", quiet_backup, "--data-dir", target, "--force") == 0
    assert not (target / "old.txt").exists()
    assert loader.load(target).next_record_no == manifest_of(quiet_backup)["journal_end"]


def test_restore_never_replaces_a_data_dir_in_use(quiet_backup, tmp_path, capsys):
    target = tmp_path / "busy"
    shutil.copytree(quiet_backup, target)
    held = common.lock(target)               # what a running switch holds
    try:
        assert run_cli("restore", "--from", quiet_backup, "--data-dir", target,
                       "--force") == 2
        assert "in use" in capsys.readouterr().err
    finally:
        held.close()


def test_restore_without_the_key_says_so(quiet_backup, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ONECARD_KEK")
    target = tmp_path / "keyless"
    assert run_cli("restore", "--from", quiet_backup, "--data-dir", target) == 2
    err = capsys.readouterr().err
    assert "key-encryption key" in err and "never holds" in err
    assert not target.exists()
    # The same key, in the file restore looks for beside the data directory, opens it.
    (tmp_path / "keyless.kek").write_text(TEST_KEK + "\n")
    assert run_cli("restore", "--from", quiet_backup, "--data-dir", target) == 0


def test_the_manifest_hmac_is_under_a_key_derived_from_the_kek(quiet_backup):
    manifest = manifest_of(quiet_backup)
    kek = bytes.fromhex(TEST_KEK)
    mac_key = keystore.backup_mac_key(kek)
    assert mac_key != kek and len(mac_key) == 32
    assert manifest[backup.HMAC_FIELD] == backup.manifest_hmac(manifest, mac_key)
    assert manifest[backup.HMAC_FIELD] != backup.manifest_hmac(manifest, kek)


def refused_untouched(source: Path, tmp_path: Path, capsys, *flags: str) -> str:
    """Restore source over a data directory holding one file (--force): refused with exit
    status 2 in one line, the directory as it was (but for the lock a restore takes); the
    line."""
    target = tmp_path / "target"
    target.mkdir(exist_ok=True)
    (target / "keep.txt").write_text("mine")
    assert run_cli("restore", "--from", source, "--data-dir", target, "--force", *flags) == 2
    refusals = [line for line in capsys.readouterr().err.splitlines()
                if not line.startswith("onecard restore: checking")]
    assert len(refusals) == 1, refusals
    assert set(os.listdir(target)) - {"onecard.lock"} == {"keep.txt"}
    assert (target / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".target.restoring-*"))
    return refusals[0]


def tampered(quiet_backup: Path, tmp_path: Path, change) -> Path:
    """A copy of the backup with change(directory, manifest) applied, the manifest rewritten
    as backup wrote it (so only what change did differs)."""
    copy = tmp_path / "tampered"
    shutil.copytree(quiet_backup, copy)
    manifest = manifest_of(copy)
    change(copy, manifest)
    (copy / backup.MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return copy


def changed_holders(copy: Path, manifest: dict) -> None:
    """holders.bin changed and its checksum in the manifest with it (what someone who can
    write the backup but has no key could do)."""
    path = copy / "holders.bin"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    manifest["files"]["holders.bin"] = backup._sha256(path)


def later_journal_end(_copy: Path, manifest: dict) -> None:
    manifest["journal_end"] += 1


def no_hmac(_copy: Path, manifest: dict) -> None:
    del manifest[backup.HMAC_FIELD]


@pytest.mark.parametrize("change, says", [
    (changed_holders, "fails authentication"),
    (later_journal_end, "fails authentication"),
    (no_hmac, "is not authenticated"),
])
def test_a_tampered_backup_is_refused_and_nothing_restored(quiet_backup, tmp_path, capsys,
                                                           change, says):
    source = tampered(quiet_backup, tmp_path, change)
    line = refused_untouched(source, tmp_path, capsys)
    assert says in line and "nothing restored" in line, line


def test_a_backup_is_refused_under_another_kek(quiet_backup, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ONECARD_KEK", "77" * 32)
    line = refused_untouched(quiet_backup, tmp_path, capsys)
    assert "fails authentication" in line and "$ONECARD_KEK" in line, line
    # Nor is a backup taken under a KEK that does not open the data set (its HMAC would be
    # under the wrong key): refused before the target is made.
    target = tmp_path / "bk"
    assert run_cli("backup", "--data-dir", quiet_backup.parent / "data", "--to", target) == 2
    assert "is not the one" in capsys.readouterr().err and not target.exists()


def test_a_backup_without_an_hmac_restores_only_when_asked(quiet_backup, tmp_path, capsys):
    """A backup made before manifests had an HMAC: --unauthenticated restores it (its
    SHA-256s still checked)."""
    source = tampered(quiet_backup, tmp_path, no_hmac)
    refused_untouched(source, tmp_path, capsys)
    target = tmp_path / "target"
    assert run_cli("restore", "--from", source, "--data-dir", target, "--force",
                   "--unauthenticated") == 0
    assert "restoring it unauthenticated, as asked" in capsys.readouterr().err
    assert not (target / "keep.txt").exists()
    assert loader.load(target).next_record_no == manifest_of(quiet_backup)["journal_end"]
