"""TLS on both legs of the proxy: security profile 3 client certificates, lab mode."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import pytest
import trustme
import websockets

from ocpp_replay.capture.proxy import ProxyServer, TlsOptions
from ocpp_replay.store import Store
from tests.peers import charger, run_csms, session16

pytestmark = pytest.mark.timeout(30)


def write_pems(tmp_path: Path, ca: trustme.CA, cert: trustme.LeafCert, name: str) -> tuple[Path, Path]:
    cert_pem, key_pem = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert.private_key_pem.write_to_path(str(key_pem))
    with cert_pem.open("wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return cert_pem, key_pem


async def test_profile_3_the_proxy_presents_its_client_certificate_upstream(tmp_path: Path) -> None:
    ca = trustme.CA()
    csms_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(csms_ssl)
    ca.configure_trust(csms_ssl)
    csms_ssl.verify_mode = ssl.CERT_REQUIRED  # the CSMS demands a client certificate
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    client_cert, client_key = write_pems(tmp_path, ca, ca.issue_cert("ALF-TLS3"), "client")

    async with run_csms(ssl=csms_ssl) as csms:
        # Without a client certificate the CSMS refuses the TLS handshake: the charger gets 502.
        async with ProxyServer(csms.url, tmp_path / "a.db", tls=TlsOptions(upstream_ca=ca_pem)) as proxy:
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with charger(proxy.url, "ALF-TLS3"):
                    pass
            assert refused.value.response.status_code == 502
        tls = TlsOptions(upstream_ca=ca_pem, upstream_client_cert=client_cert, upstream_client_key=client_key)
        async with ProxyServer(csms.url, tmp_path / "b.db", tls=tls) as proxy:
            async with charger(proxy.url, "ALF-TLS3") as cp:
                await session16(cp, meter_values=1)  # type: ignore[arg-type]
                sent = cp.recording.sent  # type: ignore[union-attr]
    assert csms.connections[-1].received == sent
    peer_cert = csms.connections[-1].ws.transport.get_extra_info("peercert")
    assert ("DNS", "alf-tls3") in peer_cert["subjectAltName"]  # the CSMS saw the proxy's certificate
    assert Store.open(tmp_path / "b.db").sessions()[0].frames == 2 * len(sent)


async def test_insecure_upstream_accepts_an_unverifiable_certificate_and_only_then(tmp_path: Path) -> None:
    unknown_ca = trustme.CA()  # nobody trusts it
    csms_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    unknown_ca.issue_cert("127.0.0.1").configure_cert(csms_ssl)
    async with run_csms(ssl=csms_ssl) as csms:
        async with ProxyServer(csms.url, tmp_path / "a.db") as proxy:
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with charger(proxy.url, "LAB-1"):
                    pass
            assert refused.value.response.status_code == 502
        [session] = Store.open(tmp_path / "a.db").sessions()
        assert "certificate" in (session.error or "").lower()
        async with ProxyServer(csms.url, tmp_path / "b.db", tls=TlsOptions(insecure_upstream=True)) as proxy:
            async with charger(proxy.url, "LAB-1") as cp:
                await session16(cp, meter_values=0)  # type: ignore[arg-type]


def test_bad_tls_options_are_config_errors(tmp_path: Path) -> None:
    from ocpp_replay.errors import ConfigError

    with pytest.raises(ConfigError, match="--tls-key needs --tls-cert"):
        TlsOptions(key=tmp_path / "k.pem").server_context()
    with pytest.raises(ConfigError, match="cannot load TLS certificate"):
        TlsOptions(cert=tmp_path / "missing.pem").server_context()
    with pytest.raises(ConfigError, match="--upstream-client-key needs"):
        TlsOptions(upstream_client_key=tmp_path / "k.pem").client_context()


async def test_a_tls_handshake_that_never_comes_is_dropped_at_the_deadline(tmp_path: Path) -> None:
    """A socket that connects to the wss listener and says nothing is closed by the proxy
    within the handshake deadline (the TLS handshake has the same bound)."""
    ca = trustme.CA()
    cert_pem, key_pem = write_pems(tmp_path, ca, ca.issue_cert("127.0.0.1"), "proxy")
    tls = TlsOptions(cert=cert_pem, key=key_pem)
    async with (
        run_csms() as csms,
        ProxyServer(csms.url, tmp_path / "c.db", tls=tls, handshake_timeout=0.5) as proxy,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionResetError):  # dropped: as good as closed
                assert await reader.read() == b""
        writer.close()
    assert loop.time() - started < 5


async def test_forwarded_says_https_when_chargers_came_over_wss(tmp_path: Path) -> None:
    """Behind a proxy that terminates wss and dials ws, a CSMS that allows Basic auth only over
    TLS (SteVe) learns from X-Forwarded-Proto that the charger used TLS."""
    ca = trustme.CA()
    cert_pem, key_pem = write_pems(tmp_path, ca, ca.issue_cert("127.0.0.1"), "proxy")
    charger_ssl = ssl.create_default_context()
    ca.configure_trust(charger_ssl)
    tls = TlsOptions(cert=cert_pem, key=key_pem)
    async with run_csms() as csms, ProxyServer(csms.url, tmp_path / "c.db", tls=tls, forwarded=True) as proxy:
        async with charger(proxy.url, "SP2-1", ssl=charger_ssl) as cp:
            await session16(cp, meter_values=0)  # type: ignore[arg-type]
    headers = csms.handshakes[0].headers
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["Forwarded"].startswith("for=127.0.0.1;proto=https;")
    assert headers["X-Forwarded-For"] == "127.0.0.1"
