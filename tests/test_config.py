"""routes.toml loading: env resolution, defaults, and one clear message per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy import config
from proxy.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

VENDOR_ENV = {
    "TRAVIS_API_URL": "https://api.travis.test",
    "TRAVTUS_CLIENT_ID": "tt-id",
    "TRAVTUS_CLIENT_SECRET": "tt-secret-value",
    "TRAVIS_CLIENT_ID": "tv-id",
    "TRAVIS_CLIENT_SECRET": "tv-secret-value",
    "TRAVIS_USERNAME": "user@example.com",
    "TRAVIS_PASSWORD": "tv-password-value",
    "TRAVELYZER_API_KEY": "tz-key-value",
    "TRAVELYZER_API_SECRET": "tz-secret-value",
}

ROUTE = '[[routes]]\nprefix = "/a"\nupstream = "http://127.0.0.1:9000"\n'
AUTH = '[auth.x]\ntype = "client_credentials"\ntoken_url = "http://t/token"\n'


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.loads(text, env or {})
    return info.value.problems


def test_shipped_routes_toml_is_valid_with_vendor_env() -> None:
    """The routes.toml we ship has the three vendor routes and their auth tables."""
    cfg = config.load(ROOT / "routes.toml", VENDOR_ENV)
    assert [(r.prefix, r.upstream.url, r.auth) for r in cfg.routes] == [
        ("/travtus", "https://api.travtus.com", "travtus"),
        ("/travis", "https://api.travis.test", "travis"),
        ("/travelyzer", "https://places.gotravelyzer.com", "travelyzer"),
    ]
    assert cfg.auth["travtus"].type == "client_credentials"
    assert cfg.auth["travis"].type == "password"
    assert cfg.auth["travis"].scope == "openid"
    assert cfg.auth["travelyzer"].expires_in == "24h"
    assert cfg.server.host == "127.0.0.1"


def test_secrets_never_show_in_repr() -> None:
    """Printing the whole config shows no credential value."""
    cfg = config.load(ROOT / "routes.toml", VENDOR_ENV)
    text = repr(cfg)
    for name, value in VENDOR_ENV.items():
        if "SECRET" in name or "PASSWORD" in name or "KEY" in name:
            assert value not in text
    assert cfg.auth["travtus"].client_secret is not None
    assert cfg.auth["travtus"].client_secret.reveal() == "tt-secret-value"


def test_rate_limit_and_retry_tables() -> None:
    """Rate limits default burst to rate; retry defaults follow the README."""
    cfg = config.loads(
        ROUTE + "rate_limit = { rate = 10000, burst = 5000 }\nretry = { on = [503, 429] }\n", {}
    )
    route = cfg.routes[0]
    assert route.rate_limit == config.RateLimitConfig(rate=10000, per=1.0, burst=5000, max_wait=5.0)
    assert route.retry == config.RetryConfig(on=(429, 503))
    plain = config.loads(ROUTE + "rate_limit = { rate = 50, per = 2 }\n", {}).routes[0]
    assert plain.rate_limit is not None
    assert plain.rate_limit.capacity == 50


def test_defaults() -> None:
    """Omitted keys take the documented defaults."""
    cfg = config.loads(ROUTE, {})
    assert cfg.server == config.ServerConfig(host="127.0.0.1", port=8080)
    route = cfg.routes[0]
    assert route.auth is None
    assert route.timeout == config.Timeout(connect=10.0, read=60.0)
    assert route.upstream.base_path == ""
    assert route.ca_file is None
    assert route.rate_limit is None
    assert route.retry == config.RetryConfig(
        attempts=4, backoff=0.25, max_backoff=8.0, max_wait=30.0, max_body=1048576, on=(429,)
    )


def test_env_references_and_defaults() -> None:
    """${VAR} is replaced, ${VAR:-default} falls back, inside longer strings too."""
    text = '[[routes]]\nprefix = "/a"\nupstream = "http://${HOST}:${PORT:-9000}/${BASE:-v1}"\n'
    cfg = config.loads(text, {"HOST": "127.0.0.1", "BASE": "v2"})
    assert cfg.routes[0].upstream.url == "http://127.0.0.1:9000/v2"


def test_missing_env_names_variable_and_key() -> None:
    """A missing variable names itself and where it was used."""
    text = ROUTE + '[[routes]]\nprefix = "/b"\nupstream = "${TRAVIS_API_URL}"\n'
    assert problems(text) == [
        "routes[1].upstream: environment variable TRAVIS_API_URL is not set "
        "(write ${TRAVIS_API_URL:-default} to make it optional)"
    ]


def test_upstream_parts() -> None:
    """Upstream URLs keep their base path (minus a trailing slash); IPv6 hosts work."""
    text = '[[routes]]\nprefix = "/a"\nupstream = "https://[::1]:8443/base/v1/"\n'
    up = config.loads(text, {}).routes[0].upstream
    assert (up.scheme, up.host, up.port, up.base_path) == ("https", "[::1]", 8443, "/base/v1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nport = 99999\n", "server.port: must be an integer from 0 to 65535, got 99999"),
        ('[server]\nport = "80"\n', "server.port: must be an integer from 0 to 65535, got '80'"),
        ("[server]\nhost = 1\n", "server.host: must be a string, got an integer"),
        (
            "[server]\nbind = 1\n",
            "server.bind: unknown key (allowed: host, port, allow, client_key_header, "
            "admin_access, shutdown_grace, workers)",
        ),
        ("routes = 3\n", "routes: must be an array of tables ([[routes]]), got an integer"),
        ("[other]\n", "other: unknown key (allowed: server, routes, auth, clients)"),
        ('[[routes]]\nupstream = "http://h"\n', "routes[0].prefix: is required"),
        ('[[routes]]\nprefix = "/a"\n', "routes[0].upstream: is required"),
        (
            ROUTE.replace('"/a"', '"a"'),
            "routes[0].prefix: must start with '/', got 'a'",
        ),
        (
            ROUTE.replace('"/a"', '"/a/"'),
            "routes[0].prefix: must not end with '/', got '/a/' (write '/a')",
        ),
        (
            ROUTE.replace('"/a"', '"/a/../b"'),
            "routes[0].prefix: must be plain path segments (letters, digits, -._~ and "
            "sub-delimiters; no '.', '..', '%' or empty segments), got '/a/../b'",
        ),
        (
            ROUTE.replace('"/a"', '"/-/x"'),
            "routes[0].prefix: the /-/ prefix is reserved for the proxy's own endpoints",
        ),
        (ROUTE + ROUTE, "routes[1].prefix: duplicate prefix '/a' (also routes[0])"),
        (
            ROUTE.replace("http://127.0.0.1:9000", "127.0.0.1:9000"),
            "routes[0].upstream: must be an http:// or https:// URL, got '127.0.0.1:9000'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "ftp://h"),
            "routes[0].upstream: must be an http:// or https:// URL, got 'ftp://h'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http:///path"),
            "routes[0].upstream: has no host: 'http:///path'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://h/p?x=1"),
            "routes[0].upstream: must not have a query or fragment: 'http://h/p?x=1'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://h:port"),
            "routes[0].upstream: invalid URL 'http://h:port': Port could not be cast to "
            "integer value as 'port'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://u:p@h"),
            "routes[0].upstream: must not carry user:password@ (configure an auth table instead)",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://h/a/../b"),
            "routes[0].upstream: base path must not contain '.' or '..' segments: "
            "'http://h/a/../b'",
        ),
        (
            ROUTE + 'auth = "nope"\n',
            "routes[0].auth: no [auth.nope] table (defined: none defined)",
        ),
        (ROUTE + "timeout = 5\n", "routes[0].timeout: must be a table, got an integer"),
        (
            ROUTE + "timeout = { read = 0 }\n",
            "routes[0].timeout.read: must be greater than 0, got 0",
        ),
        (
            ROUTE + 'timeout = { connect = "1s" }\n',
            "routes[0].timeout.connect: must be a number, got a string",
        ),
        (
            ROUTE + "timeout = { idle = 1 }\n",
            "routes[0].timeout.idle: unknown key (allowed: connect, read)",
        ),
        (
            ROUTE + "retries = 1\n",
            "routes[0].retries: unknown key (allowed: prefix, upstream, auth, timeout, ca_file, "
            "rate_limit, retry)",
        ),
        (ROUTE + "rate_limit = { per = 1 }\n", "routes[0].rate_limit.rate: is required"),
        (
            ROUTE + "rate_limit = { rate = 10, burst = 0.5 }\n",
            "routes[0].rate_limit.burst: must be at least 1, got 0.5",
        ),
        (
            ROUTE + "rate_limit = { rate = 10, max_wait = -1 }\n",
            "routes[0].rate_limit.max_wait: must be a number of at least 0, got -1",
        ),
        (
            ROUTE + "retry = { attempts = 0 }\n",
            "routes[0].retry.attempts: must be a whole number of at least 1, got 0",
        ),
        (
            ROUTE + "retry = { on = [500] }\n",
            "routes[0].retry.on: must be a list of statuses from 429, 503, got [500]",
        ),
        (
            ROUTE + "retry = { budget = 2 }\n",
            "routes[0].retry.budget: must be a share between 0 and 1, got 2",
        ),
        (
            ROUTE + "retry = { max_body = 1.5 }\n",
            "routes[0].retry.max_body: must be a whole number of bytes, got 1.5",
        ),
        (
            ROUTE + 'ca_file = "/nonexistent/ca.pem"\n',
            "routes[0].ca_file: file not found: '/nonexistent/ca.pem'",
        ),
        ("= broken", "invalid TOML: Invalid statement (at line 1, column 1)"),
    ],
)
def test_invalid_config_is_reported_by_key(text: str, expected: str) -> None:
    """Each mistake is named by its dotted key, with the bad value and what is allowed."""
    assert expected in problems(text)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("", "auth.x.client_id: is required"),
        ('client_id = "i"\n', "auth.x.client_secret: is required"),
        ('client_id = "i"\nclient_secret = ""\n', "auth.x.client_secret: must not be empty"),
        (
            'client_id = "i"\nclient_secret = "s"\nclient_auth = "jwt"\n',
            "auth.x.client_auth: must be one of post, basic, got 'jwt'",
        ),
        (
            'client_id = "i"\nclient_secret = "s"\napi_key = "k"\n',
            "auth.x.api_key: does not apply to type = 'client_credentials'",
        ),
        (
            'client_id = "i"\nclient_secret = "s"\ntoken_rate = { per = 60 }\n',
            "auth.x.token_rate.rate: is required",
        ),
        (
            'client_id = "i"\nclient_secret = "s"\nparams = { audience = 3 }\n',
            "auth.x.params.audience: must be a string, got an integer",
        ),
    ],
)
def test_invalid_auth_table_is_reported_by_key(table: str, expected: str) -> None:
    """Auth tables are checked per type, naming the key."""
    assert expected in problems(AUTH + table)


def test_unknown_auth_type() -> None:
    """Only the three documented token schemes exist."""
    assert problems('[auth.y]\ntype = "magic"\ntoken_url = "http://t"\n') == [
        "auth.y.type: must be one of client_credentials, password, travelyzer, got 'magic'"
    ]


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            'type = "password"\ntoken_url = "http://t"\nclient_id = "c"\n',
            "auth.p.username: is required",
        ),
        (
            'type = "password"\ntoken_url = "http://t"\nclient_id = "c"\nusername = "u"\n',
            "auth.p.password: is required",
        ),
        (
            'type = "travelyzer"\ntoken_url = "http://t"\napi_key = "k"\napi_secret = "s"\n'
            'expires_in = "2w"\n',
            "auth.p.expires_in: must be one of 30m, 1h, 24h, 7d, 30d, got '2w'",
        ),
        (
            'type = "travelyzer"\ntoken_url = "http://t"\napi_key = "k"\n',
            "auth.p.api_secret: is required",
        ),
        (
            'type = "travelyzer"\ntoken_url = "t"\napi_key = "k"\napi_secret = "s"\n',
            "auth.p.token_url: must be an http:// or https:// URL with a host (no scheme)",
        ),
        ('type = "travelyzer"\napi_key = "k"\napi_secret = "s"\n', "auth.p.token_url: is required"),
        (
            'type = "travelyzer"\ntoken_url = "https://u:pw@idp/t"\napi_key = "k"\n'
            'api_secret = "s"\n',
            "auth.p.token_url: must not carry user:password@ or a query string",
        ),
        (
            'type = "travelyzer"\ntoken_url = "https://idp/t?client_secret=x"\napi_key = "k"\n'
            'api_secret = "s"\n',
            "auth.p.token_url: must not carry user:password@ or a query string",
        ),
        (
            'type = "travelyzer"\ntoken_url = "https://idp:99999/t"\napi_key = "k"\n'
            'api_secret = "s"\n',
            "auth.p.token_url: invalid URL (bad port?)",
        ),
        (
            'type = "travelyzer"\ntoken_url = "https://idp/t"\napi_key = "k"\napi_secret = "s"\n'
            "token_rate = { rate = 0.5, per = 60 }\n",
            "auth.p.token_rate.rate: must be a whole number of at least 1, got 0.5",
        ),
    ],
)
def test_scheme_specific_fields(table: str, expected: str) -> None:
    """password needs username and password; travelyzer needs its key pair and a valid expiry."""
    assert expected in problems("[auth.p]\n" + table)


def test_secret_values_do_not_appear_in_errors() -> None:
    """Even an invalid secret is not echoed back in the error message."""
    found = problems(AUTH + 'client_id = "i"\nclient_secret = "${S}"\n', {"S": ""})
    assert found == ["auth.x.client_secret: must not be empty"]


def test_all_problems_are_reported_together() -> None:
    """One run shows every mistake, not just the first."""
    text = '[server]\nport = -1\n[[routes]]\nprefix = "x"\nupstream = "nope"\n'
    assert len(problems(text)) == 3


def test_relative_ca_file_resolves_next_to_the_config(tmp_path: Path) -> None:
    """ca_file paths are relative to routes.toml, not to the working directory."""
    (tmp_path / "ca.pem").write_text("not checked here")
    (tmp_path / "routes.toml").write_text(ROUTE + 'ca_file = "ca.pem"\n')
    cfg = config.load(tmp_path / "routes.toml", {})
    assert cfg.routes[0].ca_file == str(tmp_path / "ca.pem")


def test_unreadable_file() -> None:
    """A missing config file is one clear problem."""
    with pytest.raises(ConfigError) as info:
        config.load("/nonexistent.toml", {})
    assert info.value.problems == [
        "cannot read config file '/nonexistent.toml': No such file or directory"
    ]
