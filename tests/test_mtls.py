"""Client certificates (mTLS) to upstreams and token endpoints: nginx with
``ssl_verify_client on`` in front of the vendor sandbox refuses a connection without one
(400) and passes one that presents the configured cert_file/key_file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
import pytest
import trustme
from pytest_aiohttp import AiohttpServer

from proxy import config
from proxy.errors import ConfigError
from proxy.sandbox import SandboxSettings, build_sandbox_app

from .conftest import LEAK_WATCH, ProxyFactory
from .nginx_ref import ReferenceNginx
from .tlsfiles import Pair, encrypted_key, write_ca, write_pair

KEY_PASSWORD: Final = "client-key-password-7c21"
LEAK_WATCH.add(KEY_PASSWORD)

_TOKEN_PATH: Final = "/keycloak/realms/travis-road-services/protocol/openid-connect/token"


@dataclass
class Vendor:
    """The sandbox behind nginx's mTLS, the CA that signs nginx's certificate, and client
    certificates: one nginx trusts, one it does not."""

    url: str
    server_ca: Path
    client: Pair
    stranger: Pair
    directory: Path


@pytest.fixture
async def vendor(aiohttp_server: AiohttpServer, tmp_path: Path) -> AsyncIterator[Vendor]:
    sandbox = await aiohttp_server(build_sandbox_app(SandboxSettings()), host="127.0.0.1")
    server_ca, client_ca = trustme.CA(), trustme.CA()
    served = write_pair(server_ca.issue_cert("127.0.0.1"), tmp_path / "nginx-tls", "server")
    nginx = ReferenceNginx(tmp_path / "nginx")
    port = await nginx.mtls_front(
        served.cert, served.key, write_ca(client_ca, tmp_path / "client-ca.pem"), sandbox.port
    )
    try:
        yield Vendor(
            f"https://127.0.0.1:{port}",
            write_ca(server_ca, tmp_path / "server-ca.pem"),
            write_pair(client_ca.issue_cert("proxy.example"), tmp_path, "client"),
            write_pair(trustme.CA().issue_cert("proxy.example"), tmp_path, "stranger"),
            tmp_path,
        )
    finally:
        nginx.stop()


def _travis(vendor: Vendor, name: str, extra: str = "") -> str:
    return (
        f'[auth.{name}]\ntype = "password"\ntoken_url = "{vendor.url}{_TOKEN_PATH}"\n'
        f'client_id = "travis-portal"\nclient_secret = "sandbox-travis-secret"\n'
        f'username = "driver@example.com"\npassword = "sandbox-travis-password"\n'
        f'ca_file = "{vendor.server_ca}"\n{extra}'
    )


def _route(vendor: Vendor, prefix: str, auth: str, extra: str = "") -> str:
    return (
        f'[[routes]]\nprefix = "{prefix}"\nupstream = "{vendor.url}/travis"\nauth = "{auth}"\n'
        f'ca_file = "{vendor.server_ca}"\n{extra}'
    )


def _cert(pair: Pair) -> str:
    return f'cert_file = "{pair.cert}"\nkey_file = "{pair.key}"\n'


async def _get(proxy: str, path: str) -> tuple[int, str, str | None]:
    async with aiohttp.ClientSession() as client, client.get(f"{proxy}{path}") as r:
        return r.status, await r.text(), r.headers.get("X-Proxy-Error")


async def test_a_route_presents_its_client_certificate_to_the_upstream(
    vendor: Vendor, make_proxy: ProxyFactory
) -> None:
    """With cert_file/key_file the upstream (nginx, ssl_verify_client on) answers; without
    one, or with one from a CA nginx does not trust, nginx refuses with 400."""
    stranger = vendor.stranger
    proxy = await make_proxy(
        _route(vendor, "/with", "travis", _cert(vendor.client))
        + _route(vendor, "/without", "travis")
        + _route(vendor, "/stranger", "travis", _cert(stranger))
        + _travis(vendor, "travis", _cert(vendor.client))
    )
    status, body, error = await _get(proxy, "/with/api/v1/road-events")
    assert (status, error) == (200, None), body
    status, body, error = await _get(proxy, "/without/api/v1/road-events")
    assert (status, error) == (400, None)
    assert "No required SSL certificate was sent" in body
    status, body, error = await _get(proxy, "/stranger/api/v1/road-events")
    assert (status, error) == (400, None)
    assert "SSL certificate error" in body


async def test_a_token_endpoint_gets_the_auth_tables_client_certificate(
    vendor: Vendor, make_proxy: ProxyFactory
) -> None:
    """The token request carries the auth table's certificate (its key encrypted, opened
    with key_password from the environment); an auth table without one gets no token, and
    its route answers the proxy's own token error."""
    client = vendor.client
    encrypted = encrypted_key(client.key, vendor.directory / "client.enc.key", KEY_PASSWORD)
    certified = (
        f'cert_file = "{client.cert}"\nkey_file = "{encrypted}"\n'
        'key_password = "${CLIENT_KEY_PASSWORD}"\n'
    )
    proxy = await make_proxy(
        _route(vendor, "/good", "good", _cert(client))
        + _route(vendor, "/bare", "bare", _cert(client))
        + _travis(vendor, "good", certified)
        + _travis(vendor, "bare"),
        {"CLIENT_KEY_PASSWORD": KEY_PASSWORD},
    )
    status, body, error = await _get(proxy, "/good/api/v1/road-events")
    assert (status, error) == (200, None), body
    status, body, error = await _get(proxy, "/bare/api/v1/road-events")
    assert (status, error) == (503, "token_unavailable"), body


@pytest.fixture
def files(tmp_path: Path) -> tuple[Pair, Pair]:
    ca = trustme.CA()
    return (
        write_pair(ca.issue_cert("a.example"), tmp_path, "a"),
        write_pair(ca.issue_cert("b.example"), tmp_path, "b"),
    )


_ROUTE: Final = '[[routes]]\nprefix = "/r"\nupstream = "https://vendor.example"\n'
_AUTH: Final = (
    '[auth.v]\ntype = "client_credentials"\ntoken_url = "https://id.example/token"\n'
    'client_id = "c"\nclient_secret = "s"\n'
)


@pytest.mark.parametrize(
    ("table", "keys", "problem"),
    [
        ("route", "cert_file = '{a.cert}'", "routes[/r].key_file: is required with cert_file"),
        ("route", "key_file = '{a.key}'", "routes[/r].cert_file: is required with key_file"),
        ("route", "key_password = 'x'", "routes[/r].key_password: applies only with"),
        (
            "route",
            "cert_file = '{a.cert}'\nkey_file = '{b.key}'",
            "routes[/r].key_file: is not the key of the certificate in cert_file",
        ),
        ("route", "cert_file = 'gone.pem'\nkey_file = '{a.key}'", "routes[/r].cert_file: file not"),
        ("auth", "cert_file = '{a.cert}'", "auth.v.key_file: is required with cert_file"),
        (
            "auth",
            "cert_file = '{b.cert}'\nkey_file = '{a.key}'",
            "auth.v.key_file: is not the key of the certificate in cert_file",
        ),
        (
            "auth",
            "cert_file = '{a.key}'\nkey_file = '{a.key}'",
            "auth.v.cert_file: not a PEM file of certificates",
        ),
    ],
)
def test_client_certificate_keys_are_checked_at_load(
    files: tuple[Pair, Pair], tmp_path: Path, table: str, keys: str, problem: str
) -> None:
    """cert_file and key_file: both or neither, files that exist, a key that is the
    certificate's; key_password only with them. Each problem names its key."""
    a, b = files
    lines = keys.format(a=a, b=b) + "\n"
    text = _ROUTE + lines + _AUTH if table == "route" else _ROUTE + _AUTH + lines
    with pytest.raises(ConfigError) as raised:
        config.loads(text, {}, base_dir=tmp_path)
    assert len(raised.value.problems) == 1
    assert raised.value.problems[0].startswith(problem)


def test_a_client_certificate_loads_and_its_password_stays_hidden(
    files: tuple[Pair, Pair], tmp_path: Path
) -> None:
    """A route and an auth table with a certificate and an encrypted key load; the
    password shows in no repr."""
    a, _ = files
    encrypted_key(a.key, tmp_path / "a.enc.key", KEY_PASSWORD)
    keys = f"cert_file = '{a.cert}'\nkey_file = 'a.enc.key'\nkey_password = '{KEY_PASSWORD}'\n"
    loaded = config.loads(_ROUTE + keys + _AUTH + keys, {}, base_dir=tmp_path)
    assert loaded.routes[0].key_file == str(tmp_path / "a.enc.key")
    assert loaded.auth["v"].cert_file == str(a.cert)
    assert KEY_PASSWORD not in repr(loaded)
