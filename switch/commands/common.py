"""What every ``onecard`` command shares: its configuration (``--config``, or ./onecard.toml,
with the command line's overrides), its logging, and the data directory's lock."""

from __future__ import annotations

import os
from pathlib import Path

from onecard.switch import logs
from onecard.switch.config import Config, load, with_overrides
from onecard.switch.errors import DataDirBusy
from onecard.switch.security import modes

DEFAULT_CONFIG = Path("onecard.toml")


def config(args) -> Config:
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


def configure_logging(config: Config) -> None:
    logs.configure(config.log_level, config.log.format)


def lock(data_dir: Path):
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
