"""``onecard terminals``: the terminal registry, with each master key's check value."""

from __future__ import annotations

from onecard.protocols.enums import PROTO
from onecard.switch.commands import common

KCV_BYTES = 3        # the printed key check value: 6 hex digits, as key ceremonies read them


def run(args) -> int:
    """The terminal registry with each master key's check value; the key itself only with
    --reveal-keys (a terminal being keyed by hand, or a simulator elsewhere). A metro gate's
    station id is the ``station`` its native ``Tap`` must carry (protocols/NATIVE.md); other
    terminals have none ("-": bus and ferry readers send 0)."""
    from onecard.core import crypto
    from onecard.switch.terminals import KIND_NAMES, read_terminals

    config = common.config(args)
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
