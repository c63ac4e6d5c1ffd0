"""Where the switch listens (issue 13): terminal listeners and the admin/metrics port bind
their own addresses, and TLS (certificates made here with ``cryptography``) for the admin API,
with optional client certificates, and for ISO 8583 and native terminal links."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from onecard.core.state import TERM_BUS_READER, TERM_POS

from conftest import TOKENS, SwitchProcess, World, iso_balance, start_switch
from termsim import IsoTerminal, NativeTerminal, socket_exchange

pytestmark = pytest.mark.slow


def connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def test_terminals_and_admin_bind_their_own_addresses(switch_dir):
    sw = start_switch(switch_dir, "--host", "127.0.0.2", "--admin-host", "127.0.0.3")
    try:
        assert connects("127.0.0.2", sw.iso) and connects("127.0.0.2", sw.native)
        assert connects("127.0.0.3", sw.http)
        assert not connects("127.0.0.1", sw.iso) and not connects("127.0.0.3", sw.native)
        assert not connects("127.0.0.1", sw.http) and not connects("127.0.0.2", sw.http)
        with urllib.request.urlopen(f"http://127.0.0.3:{sw.http}/healthz", timeout=10) as r:
            assert json.loads(r.read())["status"] == "ok"
    finally:
        sw.stop()


def test_bind_addresses_from_the_config_file_and_the_old_key(switch_dir, tmp_path):
    config = tmp_path / "onecard.toml"
    config.write_text('[server]\nhost = "127.0.0.4"\n[admin]\nhost = "127.0.0.5"\n')
    sw = start_switch(switch_dir, "--config", str(config))
    try:
        assert connects("127.0.0.4", sw.iso) and not connects("127.0.0.1", sw.iso)
        assert connects("127.0.0.5", sw.http) and not connects("127.0.0.4", sw.http)
        assert any("host is now called terminal_host" in line for line in sw.output)
    finally:
        sw.stop()


# ---- TLS ----------------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key, cert: x509.Certificate) -> tuple[str, str]:
    key_path, cert_path = path.with_suffix(".key"), path.with_suffix(".pem")
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_path), str(key_path)


def _issue(subject: str, issuer_key, issuer_name: x509.Name | None, *, ca: bool = False,
           server: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(issuer_name or _name(subject)).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
    cert = builder.sign(issuer_key if issuer_key is not None else key, hashes.SHA256())
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """A CA, a server certificate for 127.0.0.1, a client certificate from the CA and one
    from a CA the switch does not trust: name -> (certificate file, key file)."""
    root = tmp_path_factory.mktemp("pki")
    ca_key, ca = _issue("onecard test CA", None, None, ca=True)
    other_key, other = _issue("someone else's CA", None, None, ca=True)
    files = {"ca": _write(root / "ca", ca_key, ca)}
    files["server"] = _write(root / "server", *_issue("127.0.0.1", ca_key, ca.subject,
                                                      server=True))
    files["client"] = _write(root / "client", *_issue("operator", ca_key, ca.subject))
    files["stranger"] = _write(root / "stranger", *_issue("stranger", other_key,
                                                          other.subject))
    return files


def tls_switch(switch_dir: Path, tmp_path: Path, pki, *, client_certs: bool) -> SwitchProcess:
    cert, key = pki["server"]
    text = (f'[admin.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n'
            f'[server.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n'
            "iso8583_port = 0\nnative_port = 0\n")
    if client_certs:
        text = text.replace("[server.tls]", f'client_ca_file = "{pki["ca"][0]}"\n'
                            "client_cert_required = true\n[server.tls]")
    config = tmp_path / "onecard.toml"
    config.write_text(text)
    return start_switch(switch_dir, "--config", str(config))


def tls_port(sw: SwitchProcess, name: str) -> int:
    for line in sw.output:
        m = re.match(rf"onecard: listening {name} tls [\d.]+:(\d+)", line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no {name} tls listener in:\n{''.join(sw.output)}")


def client_context(pki, *, trust: bool = True, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki["ca"][0] if trust else None)
    if cert is not None:
        ctx.load_cert_chain(*pki[cert])
    return ctx


def https_get(sw: SwitchProcess, path: str, ctx: ssl.SSLContext, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"https://127.0.0.1:{sw.http}{path}", headers=headers)
    with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
        return r.status, json.loads(r.read())


def test_admin_over_tls_and_terminal_links_over_tls(switch_dir, tmp_path, pki, demo_dir,
                                                    terminals):
    world = World(demo_dir, terminals)
    pan, _ = world.card(nth=7)
    sw = tls_switch(switch_dir, tmp_path, pki, client_certs=False)
    try:
        token = TOKENS[str(sw.data_dir)]["ops"]
        status, view = https_get(sw, f"/admin/cards/{pan}", client_context(pki), token)
        assert status == 200 and view["status"] == "active"
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            https_get(sw, "/healthz", client_context(pki, trust=False))
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{sw.http}/healthz", timeout=10)

        # ISO 8583 over TLS: sign-on and a purchase, approved and MACed as on plain TCP
        sock, exchange = socket_exchange("127.0.0.1", tls_port(sw, "iso8583"), 2,
                                         tls=client_context(pki))
        pos = IsoTerminal(world.terminal(TERM_POS, 31), exchange)
        assert pos.signon()["39"] == "00"
        before = iso_balance(pos, pan)
        (reply,) = pos.send(pos.purchase(pan, 1234))
        assert reply["39"] == "00" and pos.verify_reply_mac(reply)
        assert iso_balance(pos, pan) == before - 1234
        assert isinstance(sock, ssl.SSLSocket) and sock.version() in ("TLSv1.2", "TLSv1.3")
        sock.close()

        # native over TLS, and the plain native port still answers beside it
        nsock, exchange = socket_exchange("127.0.0.1", tls_port(sw, "native"), 4,
                                          tls=client_context(pki))
        gate = NativeTerminal(world.terminal(TERM_BUS_READER, 31), exchange)
        assert gate.signon().rc == "00"
        nsock.close()
        psock, exchange = socket_exchange("127.0.0.1", sw.native, 4)
        assert NativeTerminal(world.terminal(TERM_BUS_READER, 31, 1),
                              exchange).signon().rc == "00"
        psock.close()
    finally:
        sw.stop()


def test_admin_requiring_client_certificates_refuses_a_client_without_one(switch_dir,
                                                                          tmp_path, pki):
    sw = tls_switch(switch_dir, tmp_path, pki, client_certs=True)
    try:
        status, health = https_get(sw, "/healthz", client_context(pki, cert="client"))
        assert status == 200 and health["status"] == "ok"
        for ctx in (client_context(pki), client_context(pki, cert="stranger")):
            with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
                https_get(sw, "/healthz", ctx)
    finally:
        sw.stop()


def test_a_missing_certificate_file_stops_the_start_with_one_line(switch_dir, tmp_path):
    config = tmp_path / "onecard.toml"
    config.write_text(f'[admin.tls]\ncert_file = "{tmp_path}/nope.pem"\n'
                      f'key_file = "{tmp_path}/nope.key"\n')
    with pytest.raises(RuntimeError, match=r"admin\.tls.*nope\.pem"):
        start_switch(switch_dir, "--config", str(config))


def test_tls_settings_that_do_not_go_together_are_config_errors(switch_dir, tmp_path):
    config = tmp_path / "onecard.toml"
    config.write_text('[admin.tls]\ncert_file = "a.pem"\n')
    with pytest.raises(RuntimeError, match="cert_file and key_file go together"):
        start_switch(switch_dir, "--config", str(config))


def test_tls_only_terminal_listeners(pki):
    from onecard.switch.config import ServerConfig, TerminalTlsConfig
    from onecard.switch.tls import terminal_listeners

    cert, key = pki["server"]
    plain = terminal_listeners(ServerConfig())
    assert [(s.name, s.ssl) for s in plain] == [("iso8583", None), ("native", None)]
    both = terminal_listeners(ServerConfig(tls=TerminalTlsConfig(cert_file=cert, key_file=key)))
    assert [s.name for s in both] == ["iso8583", "native", "iso8583 tls", "native tls"]
    only = terminal_listeners(ServerConfig(tls=TerminalTlsConfig(cert_file=cert, key_file=key,
                                                                 plain_listeners=False)))
    assert [s.name for s in only] == ["iso8583 tls", "native tls"]
    assert all(isinstance(s.ssl, ssl.SSLContext) for s in only)
