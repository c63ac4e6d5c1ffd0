"""Journal-row commits per second into a single-node PostgreSQL with psycopg 3 (issue 14:
"choose the driver by measurement"), so that the next phase can pick how the committer thread
writes. A journal row is what one group commit writes: ``records_per_row`` 80-byte records.

Modes, each for ``--seconds`` on a fresh journal table:
  insert    autocommit INSERT per row: one commit and one round trip per row
  pipeline  pipeline mode: an INSERT and a Sync per row (a commit each) sent without waiting
            for the answers before them: the round trips overlap, the WAL flushes do not
  copy      binary COPY of ``--rows-per-copy`` rows, then COMMIT: one commit per batch
  asyncpg   asyncpg on an event loop, a prepared INSERT per row awaited (a commit each): the
            other driver the issue names (skipped when asyncpg is not installed)

python -m onecard.bench.pg_commit                       # a throwaway local server (fsync on)
python -m onecard.bench.pg_commit --dsn "host=... dbname=..."
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Final

RECORD_BYTES: Final = 80
# A real (WAL-logged) table: a transaction that wrote only a TEMP table writes no WAL of its
# own, and its COMMIT then does not wait for a WAL flush (4,490 "commits"/s measured so).
TABLE: Final = ("CREATE TABLE bench_journal (first_no bigint PRIMARY KEY, n int NOT NULL, "
                "ts_us bigint NOT NULL, records bytea NOT NULL, format smallint NOT NULL)")
INSERT: Final = "INSERT INTO bench_journal VALUES (%s, %s, %s, %s, 3)"
PIPELINE_BATCH_ROWS: Final = 64         # rows between looks at the clock


def _rows(records_per_row: int):
    blob = os.urandom(RECORD_BYTES * records_per_row)   # ciphertext-like: incompressible
    first_no = 0
    while True:
        yield first_no, records_per_row, time.time_ns() // 1000, blob
        first_no += records_per_row


def run_insert(conn, rows, deadline: float) -> tuple[int, int]:
    commits = 0
    while time.perf_counter() < deadline:
        conn.execute(INSERT, next(rows), prepare=True)
        commits += 1
    return commits, commits


def run_pipeline(conn, rows, deadline: float) -> tuple[int, int]:
    # Statements between two Syncs are one implicit transaction (checked: a failing second
    # INSERT rolls back the first), so a Sync after each row makes each row its own commit.
    commits = 0
    with conn.pipeline() as p, conn.cursor() as cur:
        while time.perf_counter() < deadline:
            for _ in range(PIPELINE_BATCH_ROWS):
                cur.execute(INSERT, next(rows), prepare=True)
                p.sync()
            commits += PIPELINE_BATCH_ROWS
    return commits, commits


def run_copy(conn, rows, deadline: float, rows_per_copy: int) -> tuple[int, int]:
    commits = written = 0
    while time.perf_counter() < deadline:
        with conn.transaction(), conn.cursor().copy(
                "COPY bench_journal FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "int4", "int8", "bytea", "int2"])
            for _ in range(rows_per_copy):
                copy.write_row((*next(rows), 3))
        commits += 1
        written += rows_per_copy
    return commits, written


def measure_asyncpg(dsn: str, seconds: float, records_per_row: int) -> dict | None:
    try:
        import asyncio

        import asyncpg
    except ImportError:
        return None
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)

    async def run() -> tuple[int, float]:
        port = params.get("port")
        conn = await asyncpg.connect(host=params.get("host"),
                                     port=int(port) if port is not None else 5432,
                                     user=params.get("user"), password=params.get("password"),
                                     database=params.get("dbname"))
        try:
            await conn.execute("DROP TABLE IF EXISTS bench_journal")
            await conn.execute(TABLE)
            insert = await conn.prepare("INSERT INTO bench_journal VALUES ($1, $2, $3, $4, 3)")
            rows, commits = _rows(records_per_row), 0
            started = time.perf_counter()
            while time.perf_counter() < started + seconds:
                await insert.fetch(*next(rows))
                commits += 1
            elapsed_s = time.perf_counter() - started
            await conn.execute("DROP TABLE bench_journal")
            return commits, elapsed_s
        finally:
            await conn.close()

    commits, elapsed_s = asyncio.run(run())
    return {"mode": "asyncpg", "commits_per_s": commits / elapsed_s,
            "rows_per_s": commits / elapsed_s,
            "records_per_s": commits * records_per_row / elapsed_s}


def measure(dsn: str, mode: str, seconds: float, records_per_row: int,
            rows_per_copy: int) -> dict | None:
    import psycopg

    if mode == "asyncpg":
        return measure_asyncpg(dsn, seconds, records_per_row)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_journal")
        conn.execute(TABLE)
        run: Callable = {"insert": run_insert, "pipeline": run_pipeline}.get(mode) or (
            lambda c, r, d: run_copy(c, r, d, rows_per_copy))
        started = time.perf_counter()
        commits, written = run(conn, _rows(records_per_row), started + seconds)
        elapsed_s = time.perf_counter() - started
        conn.execute("DROP TABLE bench_journal")
    return {"mode": mode, "commits_per_s": commits / elapsed_s, "rows_per_s": written / elapsed_s,
            "records_per_s": written * records_per_row / elapsed_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dsn", help="default: a throwaway local server (fsync on)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--records-per-row", type=int, default=32)
    p.add_argument("--rows-per-copy", type=int, default=64)
    p.add_argument("--modes", default="insert,pipeline,copy,asyncpg")
    args = p.parse_args(argv)
    server = None
    if args.dsn is None:
        from onecard.bench import pg_local

        server = pg_local.start(durable=True)
    try:
        dsn = args.dsn
        if not dsn:
            assert server is not None           # started above, without --dsn
            dsn = server.dsn
        where = "a throwaway local server, fsync on" if server else "--dsn"   # no password
        print(f"psycopg 3, {args.records_per_row} records ({args.records_per_row * 80} B) a "
              f"row, {args.seconds:g} s a mode, {where}")
        for mode in args.modes.split(","):
            r = measure(dsn, mode, args.seconds, args.records_per_row, args.rows_per_copy)
            if r is None:
                print(f"{mode:9} not installed (pip install {mode})")
                continue
            print(f"{r['mode']:9} {r['commits_per_s']:>10,.0f} commits/s "
                  f"{r['rows_per_s']:>10,.0f} rows/s {r['records_per_s']:>12,.0f} records/s",
                  flush=True)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
