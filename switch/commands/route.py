"""``onecard region route`` and ``onecard region table``: publish and read the routing table
(``routing.py``) from the command line, the way an operator hands a province over
(docs/regions.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from onecard.switch.region import routing

CONNECT_TIMEOUT_S = 5.0


def parse_sets(sets: list[str]) -> dict[int, str]:
    """['31,33=east', '32=js'] -> {31: 'east', 33: 'east', 32: 'js'}; ValueError otherwise."""
    owners: dict[int, str] = {}
    for item in sets:
        codes, sep, region = item.partition("=")
        if not sep or not codes.strip():
            raise ValueError(f"--set {item!r}: give CODES=REGION, e.g. 31,33=east")
        routing.check_region(region.strip())
        for code in codes.split(","):
            if not code.strip().isdigit():
                raise ValueError(f"--set {item!r}: {code!r} is not a province code")
            province = int(code)
            if owners.get(province, region.strip()) != region.strip():
                raise ValueError(f"--set: province {province} given to two regions")
            owners[province] = region.strip()
    return owners


async def _connect(urls: str):
    import nats

    servers = [u.strip() for u in urls.split(",") if u.strip()]
    if not servers:
        raise ValueError("--nats: give at least one server URL")
    return await nats.connect(servers=servers, connect_timeout=CONNECT_TIMEOUT_S,
                              max_reconnect_attempts=2, allow_reconnect=True), len(servers)


async def publish(urls: str, sets: list[str], replicas: int | None = None
                  ) -> routing.RoutingTable:
    """Publish the current table with ``sets`` (CODES=REGION) applied as the next version;
    the bucket is created with ``replicas`` (default by the number of servers) if missing."""
    changes = parse_sets(sets)
    nc, n_servers = await _connect(urls)
    try:
        replicas = replicas or routing.replicas_for(n_servers)
        kv = await routing.open_bucket(nc.jetstream(), replicas)
        found = await routing.current(kv)
        old, revision = found if found is not None else (None, None)
        owners = dict(old.owners) if old is not None else {}
        owners.update(changes)
        table = routing.RoutingTable(version=(old.version + 1) if old else 1, owners=owners)
        await routing.publish(kv, table, revision)
        return table
    finally:
        await nc.close()


async def _table(args: argparse.Namespace) -> routing.RoutingTable | None:
    nc, _ = await _connect(args.nats)
    try:
        kv = await routing.open_bucket(nc.jetstream(), 1)
        found = await routing.current(kv)
        return found[0] if found is not None else None
    finally:
        await nc.close()


def describe(table: routing.RoutingTable) -> str:
    by_region: dict[str, list[int]] = {}
    for province, region in sorted(table.owners.items()):
        by_region.setdefault(region, []).append(province)
    return "; ".join(f"{region}: {','.join(map(str, ps))}"
                     for region, ps in sorted(by_region.items()))


def run(args: argparse.Namespace) -> int:
    import nats.errors

    try:
        if args.region_command == "route":
            published = asyncio.run(publish(args.nats, args.set, args.replicas))
            print(f"onecard region route: version {published.version} published: "
                  f"{describe(published)}")
            return 0
        table = asyncio.run(_table(args))
    except (ValueError, routing.StaleRoutingTable) as exc:
        print(f"onecard: {exc}", file=sys.stderr)
        return 2
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        print(f"onecard: NATS at {args.nats}: {exc}", file=sys.stderr)
        return 2
    if table is None:
        print("onecard region table: none published (every switch decides every card)")
    else:
        print(f"onecard region table: version {table.version}: {describe(table)}")
    return 0
