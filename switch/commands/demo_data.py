"""``onecard demo-data``: a generated demo data set in the data directory."""

from __future__ import annotations

import sys
from pathlib import Path

from onecard.switch.commands import common


def run(args) -> int:
    from onecard.switch import demo

    config = common.config(args)
    lock = common.lock(Path(config.data_dir))
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
