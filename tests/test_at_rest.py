"""Data at rest (issue 13): after a real run, no card number, holder name, ID number, master
key or working key is anywhere in the data directory or the logs in clear; every file is 0600
in 0700 directories whatever the umask; a restart with the right key-encryption key recovers
exactly, a wrong or missing one stops the start with one line. Operator tokens are stored as
hashes and managed without a restart; ``onecard terminals`` shows check values, not keys."""

from __future__ import annotations

import hashlib
import io
import os
import pty
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from onecard.core import crypto
from onecard.core.state import CARD_ACTIVE, FN_FINANCIAL, TERM_METRO_GATE, TERM_POS
from onecard.switch.admin import operators
from onecard.switch.security import first_tokens, keystore, sealed_files
from onecard.switch.store import dataset, loader, snapshots
from onecard.switch.terminals import read_terminals

from conftest import TOKENS, AdminClient, iso_session, native_session, start_switch

pytestmark = pytest.mark.slow

CARDS = 2000


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onecard.switch.cli", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def holders_of(data_dir: Path, keys) -> tuple[list[str], list[str]]:
    """Every holder name and ID number of the data set (from the sealed cards table)."""
    conn = sqlite3.connect(data_dir / "onecard.db")
    rows = conn.execute("SELECT idx, holder_name, id_number FROM cards").fetchall()
    conn.close()
    names = [keys.open_text("cards", "holder_name", i, n) for i, n, _ in rows]
    idents = [keys.open_text("cards", "id_number", i, d) for i, _, d in rows]
    return names, idents


def clear_reference_text(data_dir: Path) -> str:
    """Text the data set keeps in clear on purpose (places, stations, terminals): a two-
    character holder name can be a station's name too (张江), which is not a leak."""
    conn = sqlite3.connect(data_dir / "onecard.db")
    parts = []
    for table, columns in (("stations", "line, name"), ("regions", "name_zh, name_en"),
                           ("operators", "name"), ("terminals", "name, place"),
                           ("catalogue", "name_zh"), ("programmes", "name_zh")):
        parts += [" ".join(map(str, r)) for r in conn.execute(f"SELECT {columns} FROM {table}")]
    conn.close()
    return "\n".join(parts)


def secrets_of(data_dir: Path, keys, working_keys: list[bytes]) -> dict[str, bytes]:
    """Every secret value, in each form it could take on disk: {description: bytes}."""
    _, arrays = snapshots.latest(data_dir, keys)
    found: dict[str, bytes] = {}
    for pan in arrays["cards"]["pan"].tolist():
        found[f"card {pan} digits"] = str(pan).encode()
        found[f"card {pan} u64"] = int(pan).to_bytes(8, "little")
    names, idents = holders_of(data_dir, keys)
    reference = clear_reference_text(data_dir)
    for name in names:
        if name not in reference:
            found[f"name {name}"] = name.encode()
    for ident in idents:
        found[f"id {ident}"] = ident.encode()
    tmks = [t.tmk for t in read_terminals(data_dir)]
    for i, key in enumerate(tmks + working_keys):
        what = "master" if i < len(tmks) else "working"
        found[f"{what} key {i} raw"] = key
        found[f"{what} key {i} hex"] = key.hex().encode()
        found[f"{what} key {i} HEX"] = key.hex().upper().encode()
    return found


def scan(blobs: dict[str, bytes], secrets: dict[str, bytes]) -> list[str]:
    hits = []
    for where, blob in blobs.items():
        for what, value in secrets.items():
            if value in blob:
                hits.append(f"{what} in {where}")
    return hits


def files_of(data_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data_dir)): p.read_bytes()
            for p in sorted(data_dir.rglob("*")) if p.is_file()}


def drive(sw, data_dir: Path) -> tuple[list[bytes], dict]:
    """Purchases, a sign-on of each kind, a card replacement and a disbursement through the
    admin API; (working keys the terminals received, {card number: expected balance})."""
    terminals = read_terminals(data_dir)
    pos_info = next(t for t in terminals if t.kind == TERM_POS and t.province == 44)
    gate_info = next(t for t in terminals if t.kind == TERM_METRO_GATE)
    sock, pos = iso_session(sw, pos_info)
    gsock, gate = native_session(sw, gate_info)
    state = loader.load(data_dir).state          # read only: the switch owns the data set
    cards, accounts = state.cards, state.accounts
    ok = ((state.regions["code"][cards["region"]] // 10000 == 44)
          & (cards["status"] == CARD_ACTIVE) & (cards["functions"] & FN_FINANCIAL > 0)
          & (cards["expiry_yymm"] > 3000)
          & (accounts["balance_fen"][cards["account"]] > 10_000))
    chosen = np.flatnonzero(ok)[:5]
    for idx in chosen:
        (reply,) = pos.send(pos.purchase(str(int(cards["pan"][idx])), 1_234))
        assert reply["39"] == "00", reply
    api = AdminClient(sw)
    old = str(int(cards["pan"][chosen[0]]))
    replaced = api.post(f"/admin/cards/{old}/replace", role="card")
    assert replaced.status == 201, replaced.text
    paid = api.post("/admin/disbursements", {"programme": "PENSION", "period": "2026-11",
                                             "items": [{"card": str(int(cards["pan"][i])),
                                                        "amount_fen": 500}
                                                       for i in chosen[1:3]]}, role="finance")
    assert paid.status == 200, paid.text
    sock.close()
    gsock.close()
    return [pos.mak, gate.mak], {"replacement": replaced.json()["card_number"]}


def modes_of(data_dir: Path) -> list[str]:
    wrong = []
    for p in [data_dir, *sorted(data_dir.rglob("*"))]:
        mode = stat.S_IMODE(p.stat().st_mode)
        want = 0o700 if p.is_dir() else 0o600
        if mode != want:
            wrong.append(f"{p.relative_to(data_dir.parent)} {mode:o}")
    return wrong


@pytest.fixture
def no_env_kek(monkeypatch):
    """The embedded default: the key file beside the data directory, not the test KEK."""
    monkeypatch.delenv("ONECARD_KEK", raising=False)


def start_with_umask(data_dir: Path, *extra: str):
    old = os.umask(0o022)                   # a permissive umask: the switch must not care
    try:
        return start_switch(data_dir, *extra)
    finally:
        os.umask(old)


def test_nothing_secret_is_at_rest_and_a_restart_recovers_exactly(tmp_path, no_env_kek):
    data_dir = tmp_path / "data"
    sw = start_with_umask(data_dir, "--cards", str(CARDS))
    try:
        kek_file = tmp_path / "data.kek"
        assert sum("key-encryption key created in" in line and str(kek_file) in line
                   for line in sw.output) == 1
        working_keys, seen = drive(sw, data_dir)
    finally:
        assert sw.stop() == 0
    log_text = sw.text()

    keys = dataset.for_data_dir(data_dir)
    secrets = secrets_of(data_dir, keys, working_keys)
    assert f"card {seen['replacement']} digits" in secrets      # the new card is scanned too
    assert any(k.startswith("working key") for k in secrets)
    blobs = files_of(data_dir)
    assert {"onecard.db", "holders.bin"} <= set(blobs)
    assert any(name.endswith("terminals.sealed") for name in blobs)
    blobs["log"] = log_text.encode()
    assert scan(blobs, secrets) == []
    assert modes_of(data_dir) == []
    assert stat.S_IMODE(kek_file.stat().st_mode) == 0o600

    before = loader.load(data_dir)
    restarted = start_with_umask(data_dir)
    try:
        assert AdminClient(restarted).view(seen["replacement"])["status"] == "active"
    finally:
        assert restarted.stop() == 0
    after = loader.load(data_dir)
    want, got = before.state.snapshot(), after.state.snapshot()
    for name in ("cards", "accounts", "terminals"):
        assert np.array_equal(want[name], got[name]), f"{name} differs after the restart"
    assert got["terminals"]["signed_on"].sum() >= 2           # the sessions came back
    pans = got["cards"]["pan"]
    assert [after.state.card_index(int(p)) for p in pans] == list(range(len(pans)))
    assert modes_of(data_dir) == []


def problems(stderr: str) -> list[str]:
    """What a start said that is not one of its structured log lines (switch/logs.py: a
    timestamp first)."""
    return [line for line in stderr.strip().splitlines()
            if not re.match(r"\d{4}-\d\d-\d\dT", line)]


def test_a_wrong_or_missing_kek_stops_the_start_with_one_line(tmp_path, no_env_kek):
    data_dir = tmp_path / "data"
    made = cli("demo-data", "--data-dir", str(data_dir), "--cards", "1000")
    assert made.returncode == 0, made.stderr
    kek_file = tmp_path / "data.kek"
    serve = ("serve", "--data-dir", str(data_dir), "--iso8583-port", "0", "--native-port", "0",
             "--http-port", "0")
    kek_file.write_text(os.urandom(32).hex() + "\n")
    wrong = cli(*serve)
    assert wrong.returncode != 0
    assert len(problems(wrong.stderr)) == 1, wrong.stderr
    assert "key-encryption key" in wrong.stderr and "Traceback" not in wrong.stderr
    kek_file.unlink()
    missing = cli(*serve)
    assert missing.returncode != 0
    assert len(problems(missing.stderr)) == 1, missing.stderr
    assert str(kek_file) in missing.stderr and "does not exist" in missing.stderr
    env_wrong = cli(*serve, env={"ONECARD_KEK": "00" * 32})
    assert env_wrong.returncode != 0 and len(problems(env_wrong.stderr)) == 1


def test_tokens_are_hashes_and_change_without_a_restart(running_switch):
    sw = running_switch
    path = sw.data_dir / "admin-tokens.toml"
    text = path.read_text()
    tokens = TOKENS[str(sw.data_dir)]
    assert tokens and not any(t in text for t in tokens.values())
    assert all(hashlib.sha256(t.encode()).hexdigest() in text for t in tokens.values())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    api = AdminClient(sw)
    base = ("--data-dir", str(sw.data_dir))

    def status(token: str) -> int:
        return api.call("GET", "/admin/audit", auth=f"Bearer {token}").status

    added = cli("operators", "add", "alice", "--roles", "ops,card", *base)
    assert added.returncode == 0, added.stderr
    first = re.search(r"token: (\S+)", added.stdout).group(1)
    assert first not in path.read_text()
    assert status(first) == 200                                # no restart
    rotated = cli("operators", "rotate", "alice", *base)
    second = re.search(r"token: (\S+)", rotated.stdout).group(1)
    assert status(first) == 401 and status(second) == 200
    listed = cli("operators", "list", *base).stdout
    assert re.search(r"alice\s+ops,card\s+active", listed)
    assert cli("operators", "revoke", "alice", *base).returncode == 0
    assert status(second) == 401
    assert status(tokens["ops"]) == 200                        # the others are untouched
    assert re.search(r"alice\s+ops,card\s+revoked", cli("operators", "list", *base).stdout)
    assert cli("operators", "rotate", "nobody", *base).returncode == 1


def test_a_clear_tokens_file_is_rewritten_with_hashes(tmp_path):
    path = tmp_path / "tokens.toml"
    path.write_text('[[operator]]\nname = "old"\nroles = ["ops"]\ntoken = "' + "t" * 24 + '"\n')
    ops, created = operators.load_or_create(path)
    assert created == {} and "t" * 24 not in path.read_text()
    assert ops.find("t" * 24).name == "old" and ops.find("u" * 24) is None


def test_first_start_tokens_go_to_a_terminal_or_a_0600_file_never_to_a_pipe(tmp_path):
    tokens_file = tmp_path / "admin-tokens.toml"
    _, created = operators.load_or_create(tokens_file)
    roles = {name: name.removesuffix("-operator") for name in created}
    piped = io.StringIO()                   # not a terminal: what a log or a pipe collects
    path = first_tokens.hand_over(created, roles, tokens_file, piped)
    assert path == tmp_path / first_tokens.FILE_NAME and str(path) in piped.getvalue()
    assert not any(token in piped.getvalue() for token in created.values())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert {name: token for name, (_, token) in first_tokens.read(path).items()} == created
    path.unlink()
    leader, follower = pty.openpty()        # an interactive terminal: shown there, no file
    try:
        with os.fdopen(follower, "w") as terminal:
            assert first_tokens.hand_over(created, roles, tokens_file, terminal) is None
        shown = os.read(leader, 1 << 16).decode()
    finally:
        os.close(leader)
    assert all(token in shown for token in created.values()) and not path.exists()


def test_terminals_shows_check_values_unless_keys_are_revealed(demo_dir):
    infos = read_terminals(demo_dir)[:5]
    shown = cli("terminals", "--data-dir", str(demo_dir), "--limit", "5")
    assert shown.returncode == 0, shown.stderr
    for t in infos:
        assert t.tmk.hex() not in shown.stdout.lower()
        line = next(x for x in shown.stdout.splitlines() if x.startswith(t.tid))
        assert crypto.key_check_value(t.alg_name, t.tmk)[:3].hex() in line
    revealed = cli("terminals", "--data-dir", str(demo_dir), "--limit", "5", "--reveal-keys")
    assert all(t.tmk.hex() in revealed.stdout for t in infos)


def test_a_clear_checkpoint_is_sealed_at_load(world, tmp_path):
    """Files a data set had before encryption (or a crash mid-migration left clear) are
    sealed at the next load, and read the same."""
    copy = tmp_path / "data"
    shutil.copytree(world.data_dir, copy)
    snap = sorted((copy / "snapshots").glob("snapshot-*"))[-1]
    sealed = snap / "cards.sealed"
    upto = int(snap.name.split("-")[1])
    arr = sealed_files.read_array(sealed, world.keys, f"checkpoint {upto:016d} cards")
    np.save(snap / "cards.npy", arr)
    sealed.unlink()
    loaded = loader.load(copy)
    assert not (snap / "cards.npy").exists() and sealed.exists()
    assert np.array_equal(loaded.state.cards, world.state.cards)


def test_a_kek_file_inside_the_data_directory_is_refused(tmp_path):
    with pytest.raises(keystore.KekError, match="outside the data directory"):
        keystore.kek_path(tmp_path / "data", str(tmp_path / "data" / "k.kek"))


def test_a_clear_data_set_is_encrypted_in_place_by_the_migration(tmp_path):
    """A data set written before encryption (the version-1 fixture: store schema 2, clear
    tables, checkpoint and holders file) holds none of its secrets in clear once loaded."""
    with tarfile.open(Path(__file__).parent / "fixtures" / "journal-v1.tar.xz") as tar:
        tar.extractall(tmp_path, filter="data")
    data_dir = tmp_path / "data"
    reference = clear_reference_text(data_dir)
    conn = sqlite3.connect(data_dir / "onecard.db")
    secrets: dict[str, bytes] = {}
    for pan, name, ident in conn.execute("SELECT pan, holder_name, id_number FROM cards"):
        secrets |= {f"card {pan}": pan.encode(), f"id {ident}": ident.encode()}
        if name not in reference:
            secrets[f"name {name}"] = name.encode()
    for tid, tmk in conn.execute("SELECT tid, tmk FROM terminals"):
        secrets |= {f"master key {tid}": bytes(tmk), f"master key {tid} hex": tmk.hex().encode()}
    conn.close()
    snap = np.load(data_dir / "snapshots" / "snapshot-0000000000000000" / "terminals.npy")
    for i, mak in enumerate(snap["mak"]):
        if mak.any():
            secrets[f"working key {i}"] = mak.tobytes()
    for pan in np.load(data_dir / "expected" / "cards.npy")["pan"].tolist():
        secrets[f"card {pan} u64"] = int(pan).to_bytes(8, "little")
        secrets[f"card {pan}"] = str(pan).encode()

    def data_files() -> dict[str, bytes]:
        return {k: v for k, v in files_of(data_dir).items() if not k.startswith("expected")}

    assert scan(data_files(), secrets) != []                   # they were there in clear
    loader.load(data_dir)
    assert scan(data_files(), secrets) == []
