"""TLS and mutual TLS on 127.0.0.1 with a CA made for the test (openssl CLI)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from backend.config import AuthSettings, TlsSettings, load_settings
from backend.errors import ConfigError
from backend.security import ApiKeys
from backend.transport.grpc import client
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2 as pb
from backend.transport.grpc.generated.product_search.v1 import product_search_pb2_grpc as rpc
from tests.integration.conftest import Running
from tests.integration.side_server import side_server


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(ca: Path, name: str, cn: str, ext: str, cwd: Path) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj",
             f"/CN={cn}", "-out", f"{name}.csr", cwd=cwd)
    (cwd / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca / "ca.pem"), "-CAkey",
             str(ca / "ca.key"), "-CAcreateserial", "-days", "2", "-sha256", "-extfile",
             f"{name}.ext", "-out", f"{name}.pem", cwd=cwd)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        (d / ca).mkdir()
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
                 "-subj", f"/CN=prodsearch test {ca}", "-days", "2", "-out", "ca.pem",
                 cwd=d / ca)
    _signed(d / "ca", "server", "127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n", d)
    _signed(d / "ca", "client", "storefront-1", "extendedKeyUsage=clientAuth\n", d)
    _signed(d / "other-ca", "rogue", "rogue", "extendedKeyUsage=clientAuth\n", d)
    return d


def _creds(pki: Path, client_name: str | None = None, ca: str = "ca"
           ) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(pki / ca / "ca.pem").read_bytes(),
        private_key=(pki / f"{client_name}.key").read_bytes() if client_name else None,
        certificate_chain=(pki / f"{client_name}.pem").read_bytes() if client_name else None)


def _health(channel: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                      timeout=10)
    return int(reply.status)


def test_tls_server(running: Running, pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tls = TlsSettings(cert_file=str(pki / "server.pem"), key_file=str(pki / "server.key"))
    key = ApiKeys(running.app.catalog).create("storefront").key
    with side_server(running.app, tls=tls, auth=AuthSettings()) as addr:
        with grpc.secure_channel(addr, _creds(pki)) as ch:
            assert _health(ch) == health_pb2.HealthCheckResponse.SERVING
            reply = rpc.ProductSearchStub(ch).Search(
                pb.SearchRequest(text="cat", top_k=3), timeout=30,
                metadata=[("x-api-key", key)])
            assert len(reply.hits) == 3
        # A client that does not trust the server's CA, or speaks plain text, gets nowhere.
        with grpc.secure_channel(addr, _creds(pki, ca="other-ca")) as ch:
            with pytest.raises(grpc.RpcError) as info:
                _health(ch)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(addr) as ch:
            with pytest.raises(grpc.RpcError) as info:
                _health(ch)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # The CLI's client, configured by environment.
        monkeypatch.setenv("PRODSEARCH_CLIENT_CA", str(pki / "ca" / "ca.pem"))
        monkeypatch.setenv("PRODSEARCH_API_KEY", key)
        reply = client.search(addr, client.build_search_request(text="cat", top_k=2))
        assert len(reply.hits) == 2


def test_mutual_tls(running: Running, pki: Path) -> None:
    tls = TlsSettings(cert_file=str(pki / "server.pem"), key_file=str(pki / "server.key"),
                      client_ca_file=str(pki / "ca" / "ca.pem"))
    with side_server(running.app, tls=tls) as addr:
        with grpc.secure_channel(addr, _creds(pki, "client")) as ch:
            assert _health(ch) == health_pb2.HealthCheckResponse.SERVING
        for name in (None, "rogue"):  # no client certificate; one from another CA
            with grpc.secure_channel(addr, _creds(pki, name)) as ch:
                with pytest.raises(grpc.RpcError) as info:
                    _health(ch)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_incomplete_tls_settings_are_refused(pki: Path) -> None:
    with pytest.raises(ConfigError):
        load_settings(tls={"cert_file": str(pki / "server.pem")})
    with pytest.raises(ConfigError):
        load_settings(tls={"cert_file": str(pki / "nope.pem"), "key_file": str(pki / "x")})
    with pytest.raises(ConfigError):
        load_settings(tls={"client_ca_file": str(pki / "ca" / "ca.pem")})
