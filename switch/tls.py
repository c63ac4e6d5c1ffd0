"""TLS for the admin API and, as an option, for terminal links (ISO 8583 and native): server
contexts built from PEM files with Python's ``ssl`` module, and the list of terminal
listeners the switch opens (switch/server.py ``Switch.start``).

TLS terminal listeners are extra ports beside the plain ones; a TLS connection is served by
the same Connection class (asyncio's SSL transport hands it decrypted bytes), so plain-TCP
terminals run exactly the code they ran before.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from onecard.core.engine import ISO8583, NATIVE
from onecard.switch.config import ServerConfig, TlsConfig
from onecard.switch.errors import ConfigError


class TlsError(ConfigError):
    """A TLS context cannot be built (a file missing, unreadable or not matching); the
    message names the setting and the file."""


def server_context(tls: TlsConfig, where: str) -> ssl.SSLContext | None:
    """The server context for ``tls`` (``where`` names its config section in errors), or
    None when TLS is off."""
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"[{where}] cert_file {tls.cert_file} / key_file {tls.key_file}: "
                       f"{getattr(exc, 'strerror', None) or exc}") from exc
    if tls.client_ca_file:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"[{where}] client_ca_file {tls.client_ca_file}: "
                           f"{getattr(exc, 'strerror', None) or exc}") from exc
        # OPTIONAL still verifies a certificate that is presented; it only lets a client
        # without one through (the token then decides).
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.client_cert_required else ssl.CERT_OPTIONAL
    return ctx


@dataclass(frozen=True)
class ListenerSpec:
    name: str                    # as printed at start: "iso8583", "native tls", ...
    proto: int                   # core.engine ISO8583 or NATIVE
    host: str
    port: int
    port_key: str                # the config key that sets the port, for error messages
    ssl: ssl.SSLContext | None


def terminal_listeners(srv: ServerConfig) -> list[ListenerSpec]:
    """The plain listeners (ISO 8583 first, then native), then the TLS ones when
    ``[server.tls]`` has a certificate; the plain ones only unless TLS is on and
    ``plain_listeners`` is false."""
    specs = [ListenerSpec("iso8583", ISO8583, srv.terminal_host, srv.iso8583_port,
                          "server.iso8583_port", None),
             ListenerSpec("native", NATIVE, srv.terminal_host, srv.native_port,
                          "server.native_port", None)]
    context = server_context(srv.tls, "server.tls")
    if context is not None and not srv.tls.plain_listeners:
        specs = []
    if context is not None:
        specs += [ListenerSpec("iso8583 tls", ISO8583, srv.terminal_host, srv.tls.iso8583_port,
                               "server.tls.iso8583_port", context),
                  ListenerSpec("native tls", NATIVE, srv.terminal_host, srv.tls.native_port,
                               "server.tls.native_port", context)]
    return specs
