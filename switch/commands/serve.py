"""``onecard serve``: recover the state from the configured store (a demo data set first for
an empty embedded one; on PostgreSQL under a lease taken over), build the switch, open its
listeners and the admin API, and run until SIGINT/SIGTERM."""

from __future__ import annotations

import gc
import logging
import os
import sys
from pathlib import Path

from onecard.protocols.clearing import cutover_minutes
from onecard.switch import __version__, logs
from onecard.switch.commands import common
from onecard.switch.config import Config, tokens_path
from onecard.switch.security import modes
from onecard.switch.store import backend

log = logging.getLogger("onecard")

LISTENER_NOTES = {
    "iso8583": "POS terminals: ISO 8583, TPDU + header",
    "native": "gates, readers, kiosks, verifiers, venues, medical: MessagePack",
    "iso8583 tls": "POS terminals: ISO 8583 over TLS",
    "native tls": "native terminals over TLS",
}


def run(args) -> int:
    """A start that cannot serve (a full data directory, a port taken, a TLS file, the
    region's NATS) raises its OnecardError: one line from ``main``, exit status 2."""
    from onecard.switch.admission import check_data_dir

    config = common.config(args)
    common.configure_logging(config)
    data_dir = Path(config.data_dir)
    backend.open_store(config).prepare_local_dir()
    check_data_dir(data_dir, config.store.free_mb_min)   # before the lock file's write
    lock = common.lock(data_dir)
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
