"""The ``onecard`` command: serve, demo-data, load, terminals, operators, disburse, card, db,
cluster, region, clearing, backup, restore, version.

Every command runs with umask 077: whatever the data set gets (database, WAL, checkpoints,
tokens, lock, key file) is 0600 in 0700 directories, whatever the caller's umask."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sqlite3
import sys
from pathlib import Path

from onecard.protocols.clearing import cutover_minutes
from onecard.protocols.enums import PROTO, TERMINAL_KIND
from onecard.switch import __version__, logs
from onecard.switch.config import Config, load, tokens_path, with_overrides
from onecard.switch.errors import EXIT_USAGE, DataDirBusy, OnecardError
from onecard.switch.security import modes
from onecard.switch.store import backend

log = logging.getLogger("onecard")


DEFAULT_CONFIG = Path("onecard.toml")
LISTENER_NOTES = {
    "iso8583": "POS terminals: ISO 8583, TPDU + header",
    "native": "gates, readers, kiosks, verifiers, venues, medical: MessagePack",
    "iso8583 tls": "POS terminals: ISO 8583 over TLS",
    "native tls": "native terminals over TLS",
}


def _config(args) -> Config:
    path = args.config
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG                   # the documented default: ./onecard.toml
    config = load(path)
    overrides = {"data_dir": getattr(args, "data_dir", None)}
    for name in ("iso8583_port", "native_port", "http_port"):
        overrides[f"server.{name}"] = getattr(args, name, None)
    overrides["server.terminal_host"] = getattr(args, "host", None)
    overrides["admin.host"] = getattr(args, "admin_host", None)
    overrides["demo.cards"] = getattr(args, "cards", None)
    return with_overrides(config, **overrides)


def _logging(config: Config) -> None:
    logs.configure(config.log_level, config.log.format)


def _lock(data_dir: Path):
    """One switch per data directory: two would each hold a different state in memory."""
    import fcntl

    modes.private_dir(data_dir)
    handle = modes.open_private(data_dir / "onecard.lock", "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise DataDirBusy(f"data directory {data_dir} is in use by {owner}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"onecard pid {os.getpid()}\n")
    handle.flush()
    return handle


def cmd_serve(args) -> int:
    """A start that cannot serve (a full data directory, a port taken, a TLS file, the
    region's NATS) raises its OnecardError: one line from ``main``, exit status 2."""
    from onecard.switch.admission import check_data_dir

    config = _config(args)
    _logging(config)
    data_dir = Path(config.data_dir)
    backend.open_store(config).prepare_local_dir()
    check_data_dir(data_dir, config.store.free_mb_min)   # before the lock file's write
    lock = _lock(data_dir)
    try:
        loaded, lease = _recover(config, data_dir)
        # Logged once the data set opened: a start that cannot open it says why in one
        # line, and nothing else (tests/test_at_rest.py, tests/test_pg_serve.py).
        log.info("onecard %s starting on %s (%s store), pid %d", __version__,
                 data_dir.resolve(), config.store.backend, os.getpid(),
                 extra=logs.extra("start", version=__version__, pid=os.getpid(),
                                  data_dir=str(data_dir.resolve()),
                                  store=config.store.backend))
        log.info("recovered in %.2f s: %d journal records replayed from the checkpoint at "
                 "record %d", loaded.seconds, loaded.replayed, loaded.snapshot_upto,
                 extra=logs.extra("recovered", seconds=round(loaded.seconds, 3),
                                  replayed=loaded.replayed, checkpoint=loaded.snapshot_upto,
                                  next_record=loaded.next_record_no))
        modes.private_tree(data_dir)            # a data set written before 0600 was enforced
        import uvloop

        return uvloop.run(_serve(config, loaded, lease))
    finally:
        lock.close()


def _recover(config: Config, data_dir: Path):
    """The state from the configured store (a demo data set made first for an empty embedded
    one); on PostgreSQL, after taking the lease over."""
    from onecard.switch import demo

    kek_file = config.security.kek_file or None
    options = {"ring_size": config.core.ring_size,
               "map_entries_max": config.core.map_entries_max, "kek_file": kek_file,
               "idempotency_days": config.core.idempotency_days,
               "idempotency_requests_max": config.core.idempotency_requests_max,
               "cutover_s": cutover_minutes(config.clearing.cutover) * 60,
               "holder_cache_bytes": config.core.holder_cache_bytes}
    loaded, lease = backend.open_store(config).recover(options, lambda: demo.generate(
        data_dir, cards=config.demo.cards, seed=config.demo.seed,
        ring_size=config.core.ring_size, kek_file=kek_file))
    if lease is not None and lease.dropped_rows:
        print(f"onecard: {lease.dropped_rows} journal rows past a commit that never "
              "completed deleted (never answered)")
    return loaded, lease


async def _serve(config: Config, loaded, lease) -> int:
    from onecard.switch.admin import operators
    from onecard.switch.admin import routes as admin
    from onecard.switch.admin.http import start_http
    from onecard.switch.security import first_tokens
    from onecard.switch.server import Switch

    switch = Switch(config, loaded, lease)
    ops, created = operators.load_or_create(tokens_path(config))
    # Shown once (the operators file keeps only hashes), and never into a log.
    first_tokens.hand_over(created, {op.name: ",".join(op.roles) for op in ops.operators},
                           tokens_path(config))
    if loaded.migrated:
        print(f"onecard: data set upgraded to store schema {loaded.migrated[-1]} (from 4 on it "
              "is encrypted at rest; journal rows of formats 1 and 2 were rewritten as format 3 "
              "with their card numbers enciphered, the others keep their format; from 5 on each "
              "journal row is of one calendar day, indexed for clearing)")
    synced = admin.sync(switch)
    if synced:
        print(f"onecard: {synced} disbursement report rows rebuilt from the journal")
    await switch.start()
    runner = await start_http(switch, config.admin.host, config.server.http_port, ops)
    http_port = runner.addresses[0][1]
    mem = loaded.state.memory_report()
    print(f"onecard {__version__}: {mem['cards']:,} cards ({mem['bytes_per_card']:.1f} bytes "
          f"per card), {loaded.state.n_terminals:,} terminals; recovered in "
          f"{loaded.seconds:.2f} s ({loaded.replayed:,} journal records replayed)")
    for listener in switch.listeners:
        print(f"onecard: listening {listener.name} {listener.host}:{listener.port}   "
              f"({LISTENER_NOTES[listener.name]})")
    scheme = "https" if config.admin.tls.enabled else "http"
    base = f"{scheme}://{config.admin.host}:{http_port}"
    print(f"onecard: listening http {config.admin.host}:{http_port}   ({base}/metrics, "
          f"/healthz{'; TLS' if config.admin.tls.enabled else ''})")
    if lease is None:
        print(f"onecard: data in {Path(config.data_dir).resolve()}/ (SQLite journal, "
              "checkpoints)")
    else:
        print(f"onecard: store PostgreSQL (journal, checkpoints, reference data), lease epoch "
              f"{lease.epoch} taken from {lease.previous_holder or 'nobody'}; local files in "
              f"{Path(config.data_dir).resolve()}/")
    print(f"onecard: admin API {base}/admin/..., public catalogue {base}/catalogue; "
          f"operators (token hashes) in {tokens_path(config)}")
    iso = switch.listeners[0].port
    print(f"onecard: try  onecard load --port {iso} --connections 16 --window 8 --duration 10"
          f"   |   terminal ids: onecard terminals --kind pos")
    # What start-up made lives as long as the process. Left to the cyclic collector, each full
    # collection walks all of it (~50k objects, 13-15 ms on this VM with the loop stopped):
    # a stall every few seconds under load that was most of an open loop's p99.9. Frozen,
    # collections see only what was made since.
    gc.collect()
    gc.freeze()
    log.info("terminals on %s, http on %d", ", ".join(
        f"{x.name} {x.port}" for x in switch.listeners), http_port,
        extra=logs.extra("ready", http_port=http_port,
                         listeners={x.name: x.port for x in switch.listeners}))
    print("onecard: ready", flush=True)
    switch.install_signal_handlers()
    await switch.stopped.wait()
    print("onecard: stopping: finishing commits and writing a checkpoint", flush=True)
    await switch.stop()
    await runner.cleanup()
    log.info("stopped%s", f" after a journal failure: {switch.failed}" if switch.failed else "",
             extra=logs.extra("stop", next_record=switch.engine.journal.next_no,
                              failed=switch.failed is not None))
    if switch.failed is not None:
        print(f"onecard: stopped after a journal failure: {switch.failed}", file=sys.stderr)
        return 70
    return 0


def cmd_demo_data(args) -> int:
    from onecard.switch import demo

    config = _config(args)
    lock = _lock(Path(config.data_dir))
    try:
        demo.generate(Path(config.data_dir), cards=config.demo.cards,
                      seed=args.seed if args.seed is not None else config.demo.seed,
                      ring_size=config.core.ring_size, force=args.force,
                      kek_file=config.security.kek_file or None)
    except FileExistsError as exc:
        print(f"onecard demo-data: {exc}", file=sys.stderr)
        return 1
    finally:
        lock.close()
    return 0


def _embedded_only(config: Config, command: str) -> bool:
    try:
        backend.open_store(config).only_embedded(
            command, "back it up with pg_basebackup and WAL archiving (docs/operations.md). "
            "This command copies the embedded store.")
    except backend.NotEmbedded as exc:
        print(exc, file=sys.stderr)
        return False
    return True


def _backup_step(what: str, call):
    """``call()`` and 0; or None and the exit status with the reason on stderr: 2 refused
    (backup.Refused), 1 failed."""
    from onecard.switch import backup

    try:
        return call(), 0
    except backup.Refused as exc:
        print(f"onecard {what}: {exc}", file=sys.stderr)
        return None, exc.exit_status
    except (backup.BackupError, OSError, sqlite3.Error) as exc:
        print(f"onecard {what}: failed: {exc}", file=sys.stderr)
        return None, 1


def cmd_backup(args) -> int:
    """An online copy of the embedded store (a switch may be serving from it)."""
    from onecard.switch import backup

    config = _config(args)
    if not _embedded_only(config, "backup"):
        return 2
    data_dir = Path(config.data_dir)
    manifest, status = _backup_step("backup", lambda: backup.backup(
        data_dir, args.to, kek_file=config.security.kek_file or None))
    if status:
        return status
    files = manifest["files"]
    for rel, entry in sorted(files.items()):
        print(f"onecard backup: {rel}  {entry['bytes']:,} bytes  mode {entry['mode']}")
    total = sum(entry["bytes"] for entry in files.values())
    print(f"onecard backup: {len(files)} files, {total / 2**20:.1f} MiB in {args.to}: journal "
          f"end {manifest['journal_end']:,}, checkpoint upto {manifest['checkpoint_upto']:,}")
    tokens = tokens_path(config).resolve()
    if data_dir.resolve() not in tokens.parents:
        print(f"onecard backup: the operators file {tokens} is outside the data directory: "
              "not in this backup")
    print("onecard backup: manifest authenticated (HMAC-SHA256 under a key derived from the "
          "key-encryption key); the key-encryption key is not in a backup: keep it separately")
    return 0


def cmd_restore(args) -> int:
    """A backup into a data directory (refused over one a switch runs on), then loaded."""
    from onecard.switch import backup

    config = _config(args)
    if not _embedded_only(config, "restore"):
        return 2
    kek_file = args.kek_file or config.security.kek_file or None
    done, status = _backup_step("restore", lambda: backup.restore(
        args.source, config.data_dir, lock=_lock, force=args.force, kek_file=kek_file,
        unauthenticated=args.unauthenticated, ring_size=config.core.ring_size,
        map_entries_max=config.core.map_entries_max))
    if status:
        return status
    manifest, loaded = done
    print(f"onecard restore: {config.data_dir} restored from {args.source} (taken "
          f"{manifest['created']} from {manifest['source']}): {loaded.next_record_no:,} journal "
          f"records, {loaded.replayed:,} replayed after checkpoint {loaded.snapshot_upto:,}, "
          f"{len(loaded.state.cards):,} cards, loaded in {loaded.seconds:.2f} s")
    return 0


def cmd_load(args) -> int:
    from onecard.bench import loadgen

    return loadgen.main(args)


KCV_BYTES = 3        # the printed key check value: 6 hex digits, as key ceremonies read them


def cmd_terminals(args) -> int:
    """The terminal registry with each master key's check value; the key itself only with
    --reveal-keys (a terminal being keyed by hand, or a simulator elsewhere). A metro gate's
    station id is the ``station`` its native ``Tap`` must carry (protocols/NATIVE.md); other
    terminals have none ("-": bus and ferry readers send 0)."""
    from onecard.core import crypto
    from onecard.switch.terminals import KIND_NAMES, read_terminals

    config = _config(args)
    shown = 0
    heading = "master key (hex)" if args.reveal_keys else "kcv"
    width = 32 if args.reveal_keys else 2 * KCV_BYTES
    print(f"{'terminal':8}  {'kind':8}  {'protocol':8}  {'mac':4}  {heading:{width}}  "
          f"{'station':9}  {'merchant':15}  name")
    for t in read_terminals(config.data_dir, config.security.kek_file or None):
        if args.kind and KIND_NAMES[t.kind] != args.kind:
            continue
        proto = PROTO.name_of[t.protocol]
        # KCV: the key encrypting a zero block (core/crypto's check value), first 3 bytes.
        key = t.tmk.hex() if args.reveal_keys else (
            crypto.key_check_value(t.alg_name, t.tmk)[:KCV_BYTES].hex())
        station = "-" if t.station_id is None else str(t.station_id)
        print(f"{t.tid:8}  {KIND_NAMES[t.kind]:8}  {proto:8}  {t.alg_name:4}  {key:{width}}  "
              f"{station:9}  {t.merchant:15}  {t.name}")
        shown += 1
        if shown >= args.limit:
            break
    return 0


def _backup_arguments(sub, common) -> None:
    b = common(sub.add_parser("backup", help="online copy of the embedded store (the switch "
                              "may be running) with an authenticated checksum manifest; no "
                              "key"))
    b.add_argument("--to", required=True, metavar="DIR",
                   help="new or empty directory for the backup")
    b.set_defaults(func=cmd_backup)
    r = common(sub.add_parser("restore", help="restore a backup into a data directory "
                              "and load it"))
    r.add_argument("--from", dest="source", required=True, metavar="DIR",
                   help="a directory onecard backup wrote")
    r.add_argument("--force", action="store_true", help="replace a data directory that is "
                   "not empty (never one a switch runs on)")
    r.add_argument("--kek-file", help="the data set's key-encryption key (default: "
                   "[security] kek_file, else DATA_DIR.kek beside the data directory)")
    r.add_argument("--unauthenticated", action="store_true", help="restore a backup whose "
                   "manifest has no HMAC (made before backups were authenticated): its files "
                   "are checked against its SHA-256s only")
    r.set_defaults(func=cmd_restore)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onecard", description="Social security card transaction "
                                "switch (社会保障卡居民服务一卡通).")
    p.add_argument("--version", action="version", version=f"onecard {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, *, server: bool = False):
        sp.add_argument("--config", help="TOML configuration file, every key optional "
                        "(default: ./onecard.toml if it exists)")
        sp.add_argument("--data-dir", help="data directory (default: ./onecard-data)")
        if server:
            sp.add_argument("--host", help="address the terminal listeners bind "
                            "(server.terminal_host)")
            sp.add_argument("--admin-host", help="address the admin and metrics port binds "
                            "(admin.host)")
            sp.add_argument("--iso8583-port", type=int)
            sp.add_argument("--native-port", type=int)
            sp.add_argument("--http-port", type=int)
        return sp

    s = common(sub.add_parser("serve", help="run the switch (creates demo data on first run)"),
               server=True)
    s.add_argument("--cards", type=int, help="cards in a newly generated demo data set")
    s.set_defaults(func=cmd_serve)
    d = common(sub.add_parser("demo-data", help="generate the demo data set"))
    d.add_argument("--cards", type=int)
    d.add_argument("--seed", type=int)
    d.add_argument("--force", action="store_true", help="replace an existing data set")
    d.set_defaults(func=cmd_demo_data)
    t = common(sub.add_parser("terminals", help="list terminals with their master keys' "
                              "check values"))
    t.add_argument("--kind", choices=tuple(TERMINAL_KIND.value_of))
    t.add_argument("--limit", type=int, default=50)
    t.add_argument("--reveal-keys", action="store_true",
                   help="print the master keys themselves (in clear: keep the output secret)")
    t.set_defaults(func=cmd_terminals)
    from onecard.switch.security import operators_cli

    operators_cli.add_arguments(sub, common, lambda a: tokens_path(_config(a)))
    from onecard.switch.security import keys_cli

    keys_cli.add_arguments(sub, common)
    sub.choices["keys"].set_defaults(func=lambda a: keys_cli.run(a, _config(a), _lock))
    from onecard.bench import loadgen
    from onecard.switch.admin import cli as admin_cli

    admin_cli.add_arguments(sub, common)
    from onecard.switch.commands import db as db_cli

    db_cli.add_arguments(sub, _config)
    for name in ("disburse", "card"):
        sub.choices[name].set_defaults(func=lambda a: admin_cli.run(a, _config(a)))
    from onecard.switch.cluster import cli as cluster_cli

    cluster_cli.add_arguments(sub)
    from onecard.switch.region import cli as region_cli

    region_cli.add_arguments(sub, common)
    sub.choices["region"].set_defaults(func=lambda a: region_cli.run(a, _config, _lock))
    from onecard.switch.clearing import cli as clearing_cli

    clearing_cli.add_arguments(sub, common)
    sub.choices["clearing"].set_defaults(func=lambda a: clearing_cli.run(a, _config(a)))
    _backup_arguments(sub, common)
    ld = sub.add_parser("load", help="drive a running switch with signed-on terminals")
    loadgen.add_arguments(ld)
    ld.set_defaults(func=cmd_load)
    v = sub.add_parser("version", help="print the version")
    v.set_defaults(func=lambda _: print(f"onecard {__version__}") or 0)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a command; an OnecardError it raises is one line on stderr and its exit status
    (switch/errors.py), anything else a traceback: a bug."""
    modes.private_umask()
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except OnecardError as exc:
        # "onecard: ", not the command's name: scripts and tests read these lines as they
        # have always been (a command that names itself catches its errors itself).
        print(f"onecard: {exc}", file=sys.stderr)
        return exc.exit_status
    except FileNotFoundError as exc:
        # Not a bug either: a file the operator named (a CSV, a data directory's file) that
        # is not there. A missing data set is NoDataSet, an OnecardError, above.
        print(f"onecard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
