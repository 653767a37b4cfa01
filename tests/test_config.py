"""routes.toml loading: env resolution, defaults, and one clear message per problem."""

from __future__ import annotations

import codecs
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from proxy import config
from proxy.config.model import AUTH as AUTH_TABLE
from proxy.config.settings import keys
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
PASSWORD = (
    'type = "password"\ntoken_url = "http://t"\nclient_id = "c"\nusername = "u"\npassword = "p"\n'
)
TRAVELYZER = 'type = "travelyzer"\ntoken_url = "https://idp/t"\napi_key = "k"\napi_secret = "s"\n'


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
    travtus_auth, travis_auth, travelyzer_auth = (
        cfg.auth[name] for name in ("travtus", "travis", "travelyzer")
    )
    assert isinstance(travtus_auth, config.ClientCredentialsAuth)
    assert travtus_auth.type == "client_credentials"
    assert isinstance(travis_auth, config.PasswordAuth)
    assert travis_auth.type == "password"
    assert travis_auth.scope == "openid"
    assert isinstance(travelyzer_auth, config.TravelyzerAuth)
    assert travelyzer_auth.expires_in == "24h"
    assert cfg.server.host == "127.0.0.1"
    # The vendors' documented limits, where their docs give them.
    travtus = cfg.auth["travtus"].rate_limit
    assert travtus is not None
    assert (travtus.rate / travtus.per, travtus.capacity) == (10000, 5000)
    travelyzer = cfg.auth["travelyzer"].token_rate
    assert travelyzer is not None
    assert (travelyzer.rate, travelyzer.per) == (100, 60)


def test_secrets_never_show_in_repr() -> None:
    """Printing the whole config shows no credential value."""
    cfg = config.load(ROOT / "routes.toml", VENDOR_ENV)
    text = repr(cfg)
    for name, value in VENDOR_ENV.items():
        if "SECRET" in name or "PASSWORD" in name or "KEY" in name:
            assert value not in text
    travtus = cfg.auth["travtus"]
    assert isinstance(travtus, config.ClientCredentialsAuth)
    assert travtus.client_secret.reveal() == "tt-secret-value"


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
        "routes[/b].upstream: environment variable TRAVIS_API_URL is not set "
        "(write ${TRAVIS_API_URL:-default} to make it optional)"
    ]


@pytest.mark.parametrize(
    ("heading", "declared"),
    [
        ("### `[server]`", keys(config.ServerConfig)),
        ("### `[[routes]]`", keys(config.RouteConfig)),
        ("### `[auth.NAME]`", AUTH_TABLE.keys),
        ("### `[clients.NAME]`", keys(config.ClientConfig)),
        ("### `[state]`", keys(config.StateConfig)),
    ],
)
def test_readme_lists_every_key_as_declared(heading: str, declared: tuple[str, ...]) -> None:
    """The README's configuration reference has a row for each key of a table, in the order
    the model declares them (the order an unknown key's problem lists them in)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split(heading + "\n", 1)[1].split("\n#", 1)[0]
    rows = [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")]
    assert tuple(rows) == declared


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '[state]\nbackend = "fleet"\n',
            "state.backend: must be one of local, redis, got 'fleet'",
        ),
        ("[state]\nbackend = 1\n", "state.backend: must be a string, got an integer"),
        ('[state]\nurl = "tcp://x"\n', "state.url: must be a redis://, rediss:// or unix:// URL"),
        ('[state]\nbackend = "redis"\n', 'state.url: is required with backend = "redis"'),
        ("[state]\ntimeout = 0\n", "state.timeout: must be greater than 0"),
        ("[state]\nlease = 1.5\n", "state.lease: must be at most 1.0 seconds"),
        ('[state]\non_failure = "open"\n', "state.on_failure: must be one of local, closed"),
        ("[state]\nfallback_share = 0\n", 'state.fallback_share: must be "auto" or a whole'),
        ('[state]\nfallback_share = "3"\n', 'state.fallback_share: must be "auto" or a whole'),
        ("[state]\nencryption_key = 5\n", "state.encryption_key: must be a string"),
        ("[state]\nprefix = 5\n", "state.prefix: unknown key (allowed: backend, url, key_prefix"),
        ('state = "local"\n', "state: must be a table"),
    ],
)
def test_state_table_is_checked(text: str, problem: str) -> None:
    """[state] takes only a known backend, and names the key when it is wrong."""
    found = problems(text + '[[routes]]\nprefix = "/a"\nupstream = "http://h"\n')
    assert any(p.startswith(problem) for p in found), found


def test_state_url_is_never_shown_in_a_problem() -> None:
    """A refused Redis URL may hold a password: the problem names only its scheme."""
    found = problems(
        '[state]\nurl = "http://u:hunter22@h"\n[[routes]]\nprefix = "/a"\nupstream = "http://h"\n'
    )
    assert found == ["state.url: must be a redis://, rediss:// or unix:// URL, got http://"]


def test_redis_state_keys() -> None:
    """Every [state] key is read as written; "auto" and an empty key are "not set"."""
    route = '[[routes]]\nprefix = "/a"\nupstream = "http://h"\n'
    text = (
        '[state]\nbackend = "redis"\nurl = "rediss://:${PW}@h:6380/2"\nkey_prefix = "p:"\n'
        'timeout = 0.25\nlease = 0.05\non_failure = "closed"\nfallback_share = "auto"\n'
        'encryption_key = "${KEY:-}"\n'
    )
    state = config.loads(text + route, {"PW": "pw1"}).state
    assert state.url is not None
    assert state.url.reveal() == "rediss://:pw1@h:6380/2"
    assert (state.key_prefix, state.timeout, state.lease) == ("p:", 0.25, 0.05)
    assert (state.on_failure, state.fallback_share, state.encryption_key) == ("closed", None, None)
    text = text.replace('"auto"', "4").replace("${KEY:-}", "k")
    state = config.loads(text + route, {"PW": "pw1"}).state
    assert state.fallback_share == 4
    assert state.encryption_key is not None
    assert state.encryption_key.reveal() == "k"


def test_rate_limit_scope() -> None:
    """A limit is global unless it says scope = "process"."""
    text = '[[routes]]\nprefix = "/a"\nupstream = "http://h"\nrate_limit = { rate = 5 }\n'
    limit = config.loads(text, {}).routes[0].rate_limit
    assert limit is not None
    assert limit.scope == "global"
    limit = config.loads(text.replace("5 }", '5, scope = "process" }'), {}).routes[0].rate_limit
    assert limit is not None
    assert limit.scope == "process"
    assert problems(text.replace("5 }", '5, scope = "fleet" }')) == [
        "routes[/a].rate_limit.scope: must be one of global, process, got 'fleet'"
    ]


def test_state_defaults_to_this_process() -> None:
    """Without [state] (and with it empty) the state is kept in this process."""
    route = '[[routes]]\nprefix = "/a"\nupstream = "http://h"\n'
    assert config.loads(route, {}).state.backend == "local"
    assert config.loads("[state]\n" + route, {}).state.backend == "local"


def test_upstream_parts() -> None:
    """Upstream URLs keep their base path (minus a trailing slash); IPv6 hosts work."""
    text = '[[routes]]\nprefix = "/a"\nupstream = "https://[::1]:8443/base/v1/"\n'
    up = config.loads(text, {}).routes[0].upstream
    assert (up.scheme, up.host, up.port, up.base_path) == ("https", "[::1]", 8443, "/base/v1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nport = 99999\n", "server.port: must be an integer from 0 to 65535, got 99999"),
        (
            '[server]\nport = "80"\n',
            "server.port: must be an integer from 0 to 65535, got '80'"
            " (TOML numbers and true/false are written without quotes)",
        ),
        ("[server]\nhost = 1\n", "server.host: must be a string, got an integer"),
        (
            "[server]\nbind = 1\n",
            "server.bind: unknown key (allowed: host, port, allow, client_key_header, "
            "admin_access, shutdown_grace, drain_delay, workers, trusted_proxies, via, "
            "header_timeout, idle_timeout, max_connections, max_in_flight, spool_dir, "
            "max_buffered_body, max_spooled_total, hosts, egress_proxy, egress_no_proxy, tls, "
            "access_log_probes)",
        ),
        (
            '[server]\nhosts = ["proxy.internal", "bad host", "h:99999", "[::1"]\n',
            "server.hosts[1]: not a host name or name:port (IPv6 in brackets): 'bad host'",
        ),
        (
            '[server]\nhosts = ["h:99999"]\n',
            "server.hosts[0]: not a host name or name:port (IPv6 in brackets): 'h:99999'",
        ),
        (
            '[server]\nhosts = "proxy.internal"\n',
            "server.hosts: must be a list of host names (name or name:port)",
        ),
        (
            '[server]\nspool_dir = "/nonexistent/spool"\n',
            "server.spool_dir: not a writable directory: '/nonexistent/spool'",
        ),
        (
            "[server]\nmax_spooled_total = -1\n",
            "server.max_spooled_total: must be a whole number of at least 1, got -1",
        ),
        (
            "[server]\nmax_buffered_body = 0\n",
            "server.max_buffered_body: must be a whole number of at least 1, got 0",
        ),
        ("routes = 3\n", "routes: must be an array of tables ([[routes]]), got an integer"),
        ("[other]\n", "other: unknown key (allowed: server, routes, auth, clients, state)"),
        ('[[routes]]\nupstream = "http://h"\n', "routes[0].prefix: is required"),
        ('[[routes]]\nprefix = "/a"\n', "routes[/a].upstream: is required"),
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
            "routes[/a].upstream: must be an http:// or https:// URL, got '127.0.0.1:9000'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "ftp://h"),
            "routes[/a].upstream: must be an http:// or https:// URL, got 'ftp://h'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http:///path"),
            "routes[/a].upstream: has no host: 'http:///path'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://h/p?x=1"),
            "routes[/a].upstream: must not have a query or fragment: 'http://h/p?...'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://h:port"),
            "routes[/a].upstream: invalid URL 'http://h:port': Port could not be cast to "
            "integer value as 'port'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://u:p@h"),
            "routes[/a].upstream: must not carry user:password@ (configure an auth table instead)",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://h/a/../b"),
            "routes[/a].upstream: base path must not contain '.' or '..' segments: "
            "'http://h/a/../b'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://h/p#top"),
            "routes[/a].upstream: must not have a query or fragment: 'http://h/p#...'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://h/a b"),
            "routes[/a].upstream: must not contain white space or control characters: "
            "'http://h/a b'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://h/a\\tb"),
            "routes[/a].upstream: must not contain white space or control characters: "
            "'http://h/a\\tb'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://h/café"),
            "routes[/a].upstream: base path has characters that must be percent-encoded: '/café'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://h/v1/[x]"),
            "routes[/a].upstream: base path has characters that must be percent-encoded: '/v1/[x]'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://h/%zz"),
            "routes[/a].upstream: base path has a '%' that is not followed by two hex digits: "
            "'/%zz'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://h/a%2"),
            "routes[/a].upstream: base path has a '%' that is not followed by two hex digits: "
            "'/a%2'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://h\\\\evil/x"),
            "routes[/a].upstream: host is not a valid host name, IPv4 address or [IPv6] literal: "
            "'h\\\\evil'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://h%41"),
            "routes[/a].upstream: host is not a valid host name, IPv4 address or [IPv6] literal: "
            "'h%41'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://-h"),
            "routes[/a].upstream: host is not a valid host name, IPv4 address or [IPv6] literal: "
            "'-h'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://a..b"),
            "routes[/a].upstream: host is not a valid host name, IPv4 address or [IPv6] literal: "
            "'a..b'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://999.1.1.1"),
            "routes[/a].upstream: host is not a valid host name, IPv4 address or [IPv6] literal: "
            "'999.1.1.1'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://0x7f.1"),
            "routes[/a].upstream: host is not a valid host name, IPv4 address or [IPv6] literal: "
            "'0x7f.1'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://[::1]x:80"),
            "routes[/a].upstream: host is not a valid host name, IPv4 address or [IPv6] literal: "
            "'[::1]x:80'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://[v1.x]"),
            "routes[/a].upstream: host is not a valid host name, IPv4 address or [IPv6] literal: "
            "'[v1.x'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://h:0/v1"),
            "routes[/a].upstream: port must be from 1 to 65535, got 0: 'http://h:0/v1'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://u:p@h:port"),
            "routes[/a].upstream: must not carry user:password@ (configure an auth table instead)",
        ),
        (
            ROUTE.replace("http://127.0.0.1:9000", "http://u:p@[::1"),
            "routes[/a].upstream: invalid URL: Invalid IPv6 URL",
        ),
        (ROUTE + 'auth = ""\n', "routes[/a].auth: must not be empty"),
        (
            ROUTE + 'auth = "nope"\n',
            "routes[/a].auth: no [auth.nope] table (defined: none defined)",
        ),
        (ROUTE + "timeout = 5\n", "routes[/a].timeout: must be a table, got an integer"),
        (
            ROUTE + "timeout = { read = 0 }\n",
            "routes[/a].timeout.read: must be greater than 0, got 0",
        ),
        (
            ROUTE + "timeout = { read = nan }\n",
            "routes[/a].timeout.read: must be a finite number, got nan",
        ),
        (
            ROUTE + "timeout = { connect = inf }\n",
            "routes[/a].timeout.connect: must be a finite number, got inf",
        ),
        (
            ROUTE + f"timeout = {{ read = {10**400} }}\n",
            "routes[/a].timeout.read: must be a finite number, got 10000000000000000...",
        ),
        (
            ROUTE + 'timeout = { connect = "1s" }\n',
            "routes[/a].timeout.connect: must be a number, got a string",
        ),
        (
            ROUTE + "timeout = { idle = 1 }\n",
            "routes[/a].timeout.idle: unknown key (allowed: connect, read)",
        ),
        (
            ROUTE + "retries = 1\n",
            "routes[/a].retries: unknown key (allowed: prefix, upstream, auth, timeout, ca_file, "
            "cert_file, key_file, key_password, rate_limit, retry, request_buffering, "
            "rewrite_location)",
        ),
        (
            ROUTE + 'request_buffering = "yes"\n',
            "routes[/a].request_buffering: must be true or false, got 'yes'",
        ),
        (
            ROUTE + "rewrite_location = 1\n",
            "routes[/a].rewrite_location: must be true or false, got 1",
        ),
        (
            "[server]\nvia = true\n" + ROUTE,
            "server.via: must be a name, or false to send no Via, got true",
        ),
        (ROUTE + "rate_limit = { per = 1 }\n", "routes[/a].rate_limit.rate: is required"),
        (
            ROUTE + "rate_limit = { rate = 10, burst = 0.5 }\n",
            "routes[/a].rate_limit.burst: must be at least 1, got 0.5",
        ),
        (
            ROUTE + "rate_limit = { rate = 10, max_wait = -1 }\n",
            "routes[/a].rate_limit.max_wait: must be a number of at least 0, got -1",
        ),
        (
            ROUTE + "rate_limit = { rate = 10, max_wait = inf }\n",
            "routes[/a].rate_limit.max_wait: must be a finite number, got inf",
        ),
        (
            ROUTE + "rate_limit = { rate = 10, burst = nan }\n",
            "routes[/a].rate_limit.burst: must be a finite number, got nan",
        ),
        (
            ROUTE + "retry = { backoff = nan }\n",
            "routes[/a].retry.backoff: must be a finite number, got nan",
        ),
        (
            ROUTE + "retry = { max_backoff = inf }\n",
            "routes[/a].retry.max_backoff: must be a finite number, got inf",
        ),
        (
            ROUTE + "retry = { max_wait = -inf }\n",
            "routes[/a].retry.max_wait: must be a finite number, got -inf",
        ),
        (
            ROUTE + "retry = { budget = nan }\n",
            "routes[/a].retry.budget: must be a finite number, got nan",
        ),
        (
            ROUTE + "retry = { attempts = 0 }\n",
            "routes[/a].retry.attempts: must be a whole number of at least 1, got 0",
        ),
        (
            ROUTE + "retry = { on = [500] }\n",
            "routes[/a].retry.on: must be a list of statuses from 429, 503, got [500]",
        ),
        (
            ROUTE + "retry = { budget = 2 }\n",
            "routes[/a].retry.budget: must be a share between 0 and 1, got 2",
        ),
        (
            ROUTE + "retry = { max_body = 1.5 }\n",
            "routes[/a].retry.max_body: must be a whole number of bytes, got 1.5",
        ),
        (
            ROUTE + 'ca_file = "/nonexistent/ca.pem"\n',
            "routes[/a].ca_file: file not found: '/nonexistent/ca.pem'",
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
        (
            'client_id = "i"\nclient_secret = "s"\nparams = { grant_type = "evil" }\n',
            "auth.x.params.grant_type: reserved: the OAuth2 token request sets it",
        ),
        (
            'client_id = "i"\nclient_secret = "s"\nparams = { client_id = "x" }\n',
            "auth.x.params.client_id: reserved: the OAuth2 token request sets it; "
            "configure auth.x.client_id instead",
        ),
        (
            'client_id = "i"\nclient_secret = "s"\nparams = { client_secret = "x" }\n',
            "auth.x.params.client_secret: reserved: the OAuth2 token request sets it; "
            "configure auth.x.client_secret instead",
        ),
        (
            'client_id = "i"\nclient_secret = "s"\nparams = { username = "x" }\n',
            "auth.x.params.username: reserved: the OAuth2 token request sets it",
        ),
        (
            'client_id = "i"\nclient_secret = "s"\nparams = { password = "x" }\n',
            "auth.x.params.password: reserved: the OAuth2 token request sets it",
        ),
        (
            'client_id = "i"\nclient_secret = "s"\nparams = { refresh_token = "x" }\n',
            "auth.x.params.refresh_token: reserved: the OAuth2 token request sets it",
        ),
        (
            'client_id = "i"\nclient_secret = "s"\nparams = { scope = "x" }\n',
            "auth.x.params.scope: reserved: the OAuth2 token request sets it; "
            "configure auth.x.scope instead",
        ),
        ('client_id = "i"\nclient_secret = "s"\nscope = ""\n', "auth.x.scope: must not be empty"),
        (
            'client_id = "i"\nclient_secret = "s"\nscope = "${SCOPE:-}"\n',
            "auth.x.scope: must not be empty (after resolving '${SCOPE:-}')",
        ),
        (
            'client_id = "i"\nclient_secret = "s"\nclient_auth = ""\n',
            "auth.x.client_auth: must not be empty",
        ),
        (
            'client_id = "i"\nclient_secret = "s"\ndefault_lifetime = nan\n',
            "auth.x.default_lifetime: must be a finite number, got nan",
        ),
        (
            'client_id = "i"\nclient_secret = "s"\nrefresh_at = nan\n',
            "auth.x.refresh_at: must be a finite number, got nan",
        ),
        (
            'client_id = "i"\nclient_secret = "s"\nrefresh_at = 1\n',
            "auth.x.refresh_at: must be a fraction below 1, got 1.0",
        ),
        (
            'client_id = "i"\nclient_secret = "s"\ntoken_rate = { rate = 1, per = inf }\n',
            "auth.x.token_rate.per: must be a finite number, got inf",
        ),
        (
            'client_id = "i"\nclient_secret = "s"\nfetch_retry = { backoff = nan }\n',
            "auth.x.fetch_retry.backoff: must be a finite number, got nan",
        ),
        (
            'client_id = "i"\nclient_secret = "s"\ntimeout = { read = inf }\n',
            "auth.x.timeout.read: must be a finite number, got inf",
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
        (
            PASSWORD + 'params = { password = "x" }\n',
            "auth.p.params.password: reserved: the OAuth2 token request sets it; "
            "configure auth.p.password instead",
        ),
        (
            PASSWORD + 'params = { username = "x" }\n',
            "auth.p.params.username: reserved: the OAuth2 token request sets it; "
            "configure auth.p.username instead",
        ),
        (
            TRAVELYZER + 'params = { apiKey = "x" }\n',
            "auth.p.params.apiKey: reserved: the Travelyzer token request sets it; "
            "configure auth.p.api_key instead",
        ),
        (
            TRAVELYZER + 'params = { apiSecret = "x" }\n',
            "auth.p.params.apiSecret: reserved: the Travelyzer token request sets it; "
            "configure auth.p.api_secret instead",
        ),
        (
            TRAVELYZER + 'params = { expiresIn = "1y" }\n',
            "auth.p.params.expiresIn: reserved: the Travelyzer token request sets it; "
            "configure auth.p.expires_in instead",
        ),
        (
            TRAVELYZER.replace("https://idp/t", "https://idp/a b"),
            "auth.p.token_url: must not contain white space or control characters",
        ),
        (
            TRAVELYZER.replace("https://idp/t", "https://idp/t\\n"),
            "auth.p.token_url: must not contain white space or control characters",
        ),
        (
            TRAVELYZER.replace("https://idp/t", "https://idp/café"),
            "auth.p.token_url: path has characters that must be percent-encoded",
        ),
        (
            TRAVELYZER.replace("https://idp/t", "https://idp/%zz"),
            "auth.p.token_url: path has a '%' that is not followed by two hex digits",
        ),
        (
            TRAVELYZER.replace("https://idp/t", "https://id\\\\p/t"),
            "auth.p.token_url: host is not a valid host name, IPv4 address or [IPv6] literal",
        ),
        (
            TRAVELYZER.replace("https://idp/t", "https://[::1/t"),
            "auth.p.token_url: invalid URL",
        ),
        (
            TRAVELYZER.replace("https://idp/t", "https://idp:0/t"),
            "auth.p.token_url: port must be from 1 to 65535, got 0",
        ),
    ],
)
def test_scheme_specific_fields(table: str, expected: str) -> None:
    """password needs username and password; travelyzer needs its key pair and a valid expiry."""
    assert expected in problems("[auth.p]\n" + table)


def test_token_url_problems_do_not_echo_the_url() -> None:
    """A token_url is never shown in its problem: a mistyped one may hold a credential."""
    found = problems("[auth.p]\n" + TRAVELYZER.replace("https://idp/t", "https://idp/s3cr%t"))
    assert found == ["auth.p.token_url: path has a '%' that is not followed by two hex digits"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://idp:+1/t", "invalid URL (bad port?)"),
        ("https://idp:80\\\\0/t", "invalid URL (bad port?)"),
        ("https://u\\\\x@idp/t", "must not carry user:password@ or a query string"),
        ("1http://idp/t", "must be an http:// or https:// URL with a host (no scheme)"),
        ("https://[::zz]/t", "invalid URL"),
        ("https://s:[::1]%zz/t", "invalid URL"),
        ("https://[v1.x]/t", "host is not a valid host name, IPv4 address or [IPv6] literal"),
    ],
)
def test_token_url_is_read_as_aiohttp_reads_it(url: str, expected: str) -> None:
    """yarl, which sends the token request, reads the URL; what it cannot send to, or would
    send elsewhere than written, is refused, naming the part at fault where it can."""
    found = problems("[auth.p]\n" + TRAVELYZER.replace("https://idp/t", url))
    assert found == [f"auth.p.token_url: {expected}"]


@pytest.mark.parametrize(
    "url",
    ["https://[2001:db8::1]:8443/t", "http://Service_1.internal.:8080/t%2Fx", "https://idp:/t"],
)
def test_valid_token_urls_are_accepted(url: str) -> None:
    """IP literals, underscores, a trailing dot, escapes and an empty port load as written."""
    cfg = config.loads("[auth.p]\n" + TRAVELYZER.replace("https://idp/t", url), {})
    assert cfg.auth["p"].token_url == url


def test_unknown_auth_key_names_every_key() -> None:
    """The keys an auth table takes are listed as the README lists them."""
    assert problems(AUTH + 'client_id = "i"\nclient_secret = "s"\nsecret = "x"\n') == [
        "auth.x.secret: unknown key (allowed: type, token_url, client_id, client_secret, "
        "client_auth, scope, username, password, api_key, api_secret, expires_in, token_rate, "
        "params, ca_file, cert_file, key_file, key_password, default_lifetime, refresh_at, "
        "fetch_retry, rate_limit, timeout)"
    ]


def test_keys_of_other_types_are_each_reported() -> None:
    """Every key of another scheme is named, one scheme's keys before shared OAuth2 ones."""
    table = TRAVELYZER + 'client_id = "c"\nscope = "s"\nusername = "u"\nclient_auth = "basic"\n'
    assert problems("[auth.p]\n" + table) == [
        f"auth.p.{key}: does not apply to type = 'travelyzer'"
        for key in ("username", "client_id", "client_auth", "scope")
    ]


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            'type = "magic"\ntoken_url = "http://t"\nclient_id = "c"\napi_key = ""\n',
            [
                "auth.p.type: must be one of client_credentials, password, travelyzer, got 'magic'",
                "auth.p.api_key: must not be empty",
            ],
        ),
        (
            'type = "travelyzer"\napi_key = "k"\napi_secret = "s"\nscope = "s"\n',
            ["auth.p.token_url: is required"],
        ),
    ],
)
def test_keys_of_a_table_without_type_or_token_url_are_checked_not_refused(
    table: str, expected: list[str]
) -> None:
    """Without a valid type and token_url every scheme's keys are checked, and none is
    refused as not applying (the table is refused already)."""
    assert problems("[auth.p]\n" + table) == expected


def test_a_table_missing_a_required_key_still_counts_as_defined() -> None:
    """A client naming an auth table that lacks a required key hears only about that key."""
    text = (
        ROUTE
        + '[auth.x]\ntype = "password"\ntoken_url = "http://t/token"\nclient_id = "c"\n'
        + '[clients.c]\nkey = "0123456789abcdef0"\nauth = { "/a" = "x" }\n'
    )
    assert problems(text) == ["auth.x.username: is required", "auth.x.password: is required"]


def test_auth_tables_take_the_documented_defaults() -> None:
    """Keys an auth table leaves out take the README's defaults, for each scheme."""
    cfg = config.loads(
        AUTH_OK + "[auth.p]\n" + PASSWORD + "[auth.t]\n" + TRAVELYZER.replace("/t", "/t2"), {}
    )
    shared: dict[str, Any] = {
        "token_rate": None,
        "params": {},
        "ca_file": None,
        "default_lifetime": 300.0,
        "refresh_at": 0.8,
        "fetch_retry": config.FetchRetry(backoff=0.5, max_backoff=30.0, rejected_backoff=60.0),
        "rate_limit": None,
        "timeout": config.Timeout(connect=10.0, read=30.0),
    }
    assert cfg.auth == {
        "x": config.ClientCredentialsAuth(
            name="x",
            token_url="http://t/token",
            client_id="i",
            client_secret=config.Secret("s"),
            client_auth="post",
            scope=None,
            **shared,
        ),
        "p": config.PasswordAuth(
            name="p",
            token_url="http://t",
            client_id="c",
            client_secret=None,
            client_auth="post",
            scope="openid",
            username="u",
            password=config.Secret("p"),
            **shared,
        ),
        "t": config.TravelyzerAuth(
            name="t",
            token_url="https://idp/t2",
            api_key=config.Secret("k"),
            api_secret=config.Secret("s"),
            expires_in="24h",
            **shared,
        ),
    }


def test_password_scope_defaults_to_openid() -> None:
    """type = "password" asks for scope openid unless told otherwise; client_credentials asks
    for none."""
    cfg = config.loads(
        AUTH_OK + "[auth.p]\n" + PASSWORD + "[auth.q]\n" + PASSWORD + 'scope = "openid email"\n',
        {},
    )
    p, q, x = cfg.auth["p"], cfg.auth["q"], cfg.auth["x"]
    assert isinstance(p, config.PasswordAuth)
    assert isinstance(q, config.PasswordAuth)
    assert isinstance(x, config.ClientCredentialsAuth)
    assert p.scope == "openid"
    assert q.scope == "openid email"
    assert x.scope is None


@pytest.mark.parametrize(
    "upstream",
    [
        "http://Service_1.internal.example.",
        "http://10.0.0.1:8080/v1",
        "https://[2001:db8::1]/a:b@c;v=1/%2F~x",
        "http://h/base(1)/it's!$&*+,=",
    ],
)
def test_valid_upstreams_are_accepted(upstream: str) -> None:
    """Host names (underscores, trailing dot), IP literals and every RFC 3986 path character
    load."""
    parsed = config.loads(ROUTE.replace("http://127.0.0.1:9000", upstream), {}).routes[0]
    assert parsed.upstream.url.lower() == upstream.lower()


def test_secret_values_do_not_appear_in_errors() -> None:
    """Even an invalid secret is not echoed back in the error message."""
    found = problems(AUTH + 'client_id = "i"\nclient_secret = "${S}"\n', {"S": ""})
    assert found == ["auth.x.client_secret: must not be empty"]


def test_all_problems_are_reported_together() -> None:
    """One run shows every mistake, not just the first."""
    text = '[server]\nport = -1\n[[routes]]\nprefix = "x"\nupstream = "nope"\n'
    assert len(problems(text)) == 3


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_relative_ca_file_resolves_next_to_the_config(tmp_path: Path, ca: trustme.CA) -> None:
    """ca_file paths are relative to routes.toml, not to the working directory."""
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "routes.toml").write_text(ROUTE + 'ca_file = "ca.pem"\n')
    cfg = config.load(tmp_path / "routes.toml", {})
    assert cfg.routes[0].ca_file == str(tmp_path / "ca.pem")


def _not_ca_files(ca: trustme.CA) -> dict[str, bytes]:
    return {
        "text": b"not a certificate\n",
        "empty": b"",
        "private key": ca.private_key_pem.bytes(),
        "DER": ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode()),
    }


@pytest.mark.parametrize(
    ("table", "key"),
    [
        (ROUTE + 'ca_file = "ca.pem"\n', "routes[/a].ca_file"),
        (
            ROUTE + AUTH + 'client_id = "i"\nclient_secret = "s"\nca_file = "ca.pem"\n',
            "auth.x.ca_file",
        ),
    ],
    ids=["route", "auth"],
)
@pytest.mark.parametrize("content", ["text", "empty", "private key", "DER"])
def test_ca_file_that_is_not_a_pem_file_of_ca_certificates_is_refused(
    tmp_path: Path, ca: trustme.CA, table: str, key: str, content: str
) -> None:
    """A ca_file that exists but is no PEM CA certificate is named by its key at load, not
    left for serve to trip over."""
    (tmp_path / "ca.pem").write_bytes(_not_ca_files(ca)[content])
    (tmp_path / "routes.toml").write_text(table)
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "routes.toml", {})
    assert info.value.problems == [f"{key}: not a PEM file of CA certificates: 'ca.pem'"]


def test_unreadable_file() -> None:
    """A missing config file is one clear problem."""
    with pytest.raises(ConfigError) as info:
        config.load("/nonexistent.toml", {})
    assert info.value.problems == [
        "cannot read config file '/nonexistent.toml': No such file or directory"
    ]


ROUTE_BYTES = ROUTE.encode()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (ROUTE.encode("utf-16"), 'is UTF-16 (Notepad\'s "Unicode"): save it as UTF-8'),
        (
            codecs.BOM_UTF16_BE + ROUTE.encode("utf-16-be"),
            'is UTF-16 (Notepad\'s "Unicode"): save it as UTF-8',
        ),
        (ROUTE.encode("utf-32"), "is UTF-32: save it as UTF-8"),
        (
            ROUTE_BYTES.replace(b"/a", b"/\xe4"),
            "is not UTF-8: byte 0xe4 at offset 22 (line 2) cannot be decoded; save it as UTF-8",
        ),
        (
            b"\x89PNG\r\n",
            "is not UTF-8: byte 0x89 at offset 0 (line 1) cannot be decoded; save it as UTF-8",
        ),
    ],
    ids=["utf-16-le", "utf-16-be", "utf-32", "latin-1", "binary"],
)
def test_config_file_not_in_utf8_is_one_problem_naming_the_file(
    tmp_path: Path, data: bytes, expected: str
) -> None:
    """A file in UTF-16/32 or with bytes that are not UTF-8 is one problem naming the file."""
    path = tmp_path / "routes.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        config.load(path, {})
    assert info.value.problems == [f"config file {str(path)!r} {expected}"]


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    """A UTF-8 BOM, as Windows editors write one, is skipped in a file and in text."""
    path = tmp_path / "routes.toml"
    path.write_bytes(codecs.BOM_UTF8 + ROUTE_BYTES)
    assert config.load(path, {}).routes[0].prefix == "/a"
    assert config.loads("\ufeff" + ROUTE, {}).routes[0].prefix == "/a"


# -- [clients.NAME] and the newer [server] keys ------------------------------------------------

CRM_KEY = "crm-0123456789abcdef"
OPS_KEY = "ops-fedcba9876543210"
AUTH_OK = AUTH + 'client_id = "i"\nclient_secret = "s"\n'
ROUTES_AB = ROUTE + '[[routes]]\nprefix = "/b"\nupstream = "http://127.0.0.1:9001"\nauth = "x"\n'
CRM = f'[clients.crm]\nkey = "{CRM_KEY}"\n'
KEY_CHARS = (
    "clients.crm.key: must be printable ASCII without spaces or control characters "
    "(clients send it as a header value)"
)


def test_clients_load_into_dataclasses() -> None:
    """A full [clients] section loads with its routes, limit, overrides and env-resolved key."""
    text = (
        ROUTES_AB
        + AUTH_OK
        + '[auth.crm_x]\ntype = "client_credentials"\ntoken_url = "http://t/token"\n'
        'client_id = "crm"\nclient_secret = "crm-secret"\n'
        + '[clients.crm]\nkey = "${CRM_KEY}"\nroutes = ["/a", "/b"]\n'
        "rate_limit = { rate = 5, per = 60, burst = 10, max_wait = 0 }\n"
        'auth = { "/b" = "crm_x" }\n'
        + f'[clients.ops]\nkey = "{OPS_KEY}"\n'
        + '[server]\nadmin_access = "client:ops"\n'
    )
    cfg = config.loads(text, {"CRM_KEY": CRM_KEY})
    assert list(cfg.clients) == ["crm", "ops"]
    assert cfg.clients["crm"] == config.ClientConfig(
        name="crm",
        key=config.Secret(CRM_KEY),
        routes=("/a", "/b"),
        rate_limit=config.RateLimitConfig(rate=5.0, per=60.0, burst=10.0, max_wait=0.0),
        auth={"/b": "crm_x"},
    )
    assert cfg.clients["ops"] == config.ClientConfig(name="ops", key=config.Secret(OPS_KEY))
    assert cfg.clients["ops"].routes is None
    assert cfg.server.admin_access == config.AdminAccess("client", "ops")
    assert cfg.clients["crm"].key.reveal() == CRM_KEY


def test_client_keys_never_show_in_repr() -> None:
    """Client keys are Secrets: neither the whole config's repr nor the key's str shows them."""
    cfg = config.loads(ROUTE + CRM + f'[clients.ops]\nkey = "{OPS_KEY}"\n', {})
    text = repr(cfg) + str(cfg.clients["crm"]) + str(cfg.clients["ops"].key)
    assert CRM_KEY not in text
    assert OPS_KEY not in text
    assert str(cfg.clients["crm"].key) == repr(cfg.clients["crm"].key) == "Secret('***')"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("clients = 1\n" + ROUTE, "clients: must be a table, got an integer"),
        ('clients = { crm = "k" }\n' + ROUTE, "clients.crm: must be a table, got a string"),
        (ROUTE + '[clients.crm]\nroutes = ["/a"]\n', "clients.crm.key: is required"),
        (
            ROUTE + "[clients.crm]\nkey = 1234567890123456\n",
            "clients.crm.key: must be a string, got an integer",
        ),
        (ROUTE + '[clients.crm]\nkey = "${CRM_KEY:-}"\n', "clients.crm.key: must not be empty"),
        (
            ROUTE + '[clients.crm]\nkey = "${CRM_KEY}"\n',
            "clients.crm.key: environment variable CRM_KEY is not set "
            "(write ${CRM_KEY:-default} to make it optional)",
        ),
        (
            ROUTE + '[clients.crm]\nkey = "0123456789abcde"\n',
            "clients.crm.key: must be at least 16 characters (use a random token)",
        ),
        (ROUTE + '[clients.crm]\nkey = "0123456789abcdef\\n"\n', KEY_CHARS),
        (ROUTE + '[clients.crm]\nkey = " 0123456789abcdef"\n', KEY_CHARS),
        (ROUTE + '[clients.crm]\nkey = "0123456789abcdef "\n', KEY_CHARS),
        (ROUTE + '[clients.crm]\nkey = "0123456789\\tabcdef"\n', KEY_CHARS),
        (ROUTE + f'[clients.crm]\nkey = "{" " * 16}"\n', KEY_CHARS),
        (ROUTE + '[clients.crm]\nkey = "0123456789abcdef\\u007f"\n', KEY_CHARS),
        (ROUTE + '[clients.crm]\nkey = "0123456789abcdef\\u00a0"\n', KEY_CHARS),
        (ROUTE + '[clients.crm]\nkey = "0123456789abcdefé"\n', KEY_CHARS),
        (
            ROUTE + CRM + "keys = []\n",
            "clients.crm.keys: unknown key (allowed: key, routes, rate_limit, auth)",
        ),
        (ROUTE + CRM + 'routes = "/a"\n', "clients.crm.routes: must be a list of route prefixes"),
        (ROUTE + CRM + "routes = [1]\n", "clients.crm.routes: must be a list of route prefixes"),
        (ROUTE + CRM + 'routes = ["/a", "/b"]\n', "clients.crm.routes: no such route prefix: /b"),
        (
            ROUTE + CRM + 'routes = ["/b", "/a", "/c"]\n',
            "clients.crm.routes: no such route prefix: /b, /c",
        ),
        (
            ROUTES_AB + AUTH_OK + CRM + 'auth = { "/a" = "nope" }\n',
            "clients.crm.auth.'/a': no [auth.nope] table",
        ),
        (
            ROUTES_AB + AUTH_OK + CRM + 'auth = { "/a" = 1 }\n',
            "clients.crm.auth.'/a': no [auth.1] table",
        ),
        (
            ROUTES_AB + AUTH_OK + CRM + 'auth = { "/zz" = "x" }\n',
            "clients.crm.auth.'/zz': no such route prefix",
        ),
        (
            ROUTES_AB + AUTH_OK + CRM + 'auth = "x"\n',
            "clients.crm.auth: must be a table, got a string",
        ),
        (
            ROUTE + CRM + "rate_limit = 5\n",
            "clients.crm.rate_limit: must be a table, got an integer",
        ),
        (ROUTE + CRM + "rate_limit = { per = 60 }\n", "clients.crm.rate_limit.rate: is required"),
        (
            ROUTE + CRM + "rate_limit = { rate = 0 }\n",
            "clients.crm.rate_limit.rate: must be greater than 0, got 0",
        ),
        (
            ROUTE + CRM + "rate_limit = { rate = -3 }\n",
            "clients.crm.rate_limit.rate: must be greater than 0, got -3",
        ),
        (
            ROUTE + CRM + 'rate_limit = { rate = "5/s" }\n',
            "clients.crm.rate_limit.rate: must be a number, got a string",
        ),
        (
            ROUTE + CRM + "rate_limit = { rate = true }\n",
            "clients.crm.rate_limit.rate: must be a number, got a boolean",
        ),
        (
            ROUTE + CRM + "rate_limit = { rate = 5, per = 0 }\n",
            "clients.crm.rate_limit.per: must be greater than 0, got 0",
        ),
        (
            ROUTE + CRM + "rate_limit = { rate = 5, burst = 0.5 }\n",
            "clients.crm.rate_limit.burst: must be at least 1, got 0.5",
        ),
        (
            ROUTE + CRM + "rate_limit = { rate = 5, max_wait = -1 }\n",
            "clients.crm.rate_limit.max_wait: must be a number of at least 0, got -1",
        ),
        (
            ROUTE + CRM + "rate_limit = { rate = nan }\n",
            "clients.crm.rate_limit.rate: must be a finite number, got nan",
        ),
        (
            ROUTE + CRM + "rate_limit = { rate = inf }\n",
            "clients.crm.rate_limit.rate: must be a finite number, got inf",
        ),
        (
            ROUTE + CRM + "rate_limit = { rate = 5, per = nan }\n",
            "clients.crm.rate_limit.per: must be a finite number, got nan",
        ),
        (
            ROUTE + CRM + "rate_limit = { rate = 5, max_wait = nan }\n",
            "clients.crm.rate_limit.max_wait: must be a finite number, got nan",
        ),
        (
            ROUTE + CRM + "rate_limit = { rate = 5, every = 60 }\n",
            "clients.crm.rate_limit.every: unknown key "
            "(allowed: rate, per, burst, max_wait, scope)",
        ),
    ],
)
def test_invalid_client_is_reported_by_key(text: str, expected: str) -> None:
    """Each mistake in a [clients.NAME] table is named by its dotted key."""
    assert expected in problems(text)


RATE_RANGE = "rate / per must come to a finite number of requests a second above 0, got "


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            ROUTE + "rate_limit = { rate = 1e200, per = 1e-200 }\n",
            f"routes[/a].rate_limit: {RATE_RANGE}1e+200 / 1e-200",
        ),
        (
            ROUTE + "rate_limit = { rate = 1e-300, per = 1e100, burst = 1 }\n",
            f"routes[/a].rate_limit: {RATE_RANGE}1e-300 / 1e+100",
        ),
        (
            ROUTE + AUTH_OK + "rate_limit = { rate = 1e300, per = 1e-10 }\n",
            f"auth.x.rate_limit: {RATE_RANGE}1e+300 / 1e-10",
        ),
        (
            ROUTE + CRM + "rate_limit = { rate = 1e-308, per = 1e10, burst = 1 }\n",
            f"clients.crm.rate_limit: {RATE_RANGE}1e-308 / 10000000000.0",
        ),
    ],
)
def test_rate_limit_beyond_what_a_float_holds_is_refused(text: str, expected: str) -> None:
    """A rate_limit whose rate / per overflows or underflows is refused: serve could not
    build its limiter (a division by zero at start-up)."""
    assert problems(text) == [expected]


def test_client_key_with_a_newline_is_not_echoed() -> None:
    """A key read with its trailing newline is refused without showing the key."""
    found = problems(ROUTE + '[clients.crm]\nkey = "${CRM_KEY}"\n', {"CRM_KEY": CRM_KEY + "\n"})
    assert found == [KEY_CHARS]


def test_short_client_key_is_not_echoed() -> None:
    """A too-short key is reported without showing its value."""
    assert problems(ROUTE + '[clients.crm]\nkey = "hunter2"\n') == [
        "clients.crm.key: must be at least 16 characters (use a random token)"
    ]


def test_duplicate_client_key() -> None:
    """Two clients sharing one key are refused, naming both and showing neither key."""
    text = ROUTE + CRM + f'[clients.ops]\nkey = "{CRM_KEY}"\n'
    assert problems(text) == ["clients.ops.key: same key as clients.crm"]


def test_duplicate_client_key_after_env_resolution() -> None:
    """Keys are compared after ${VAR} resolution, so two variables with one value clash."""
    text = ROUTE + '[clients.a]\nkey = "${A}"\n[clients.b]\nkey = "${B}"\n'
    assert problems(text, {"A": CRM_KEY, "B": CRM_KEY}) == ["clients.b.key: same key as clients.a"]


def test_via_false_turns_the_header_off() -> None:
    """server.via = false loads as no Via name; a route's rewrite_location defaults on."""
    loaded = config.loads("[server]\nvia = false\n" + ROUTE, {})
    assert loaded.server.via is None
    assert loaded.routes[0].rewrite_location is True
    off = config.loads(ROUTE + "rewrite_location = false\n", {})
    assert off.routes[0].rewrite_location is False


def test_server_keys_load() -> None:
    """allow becomes networks (host bits dropped), the other server keys keep their values."""
    text = (
        ROUTE + CRM + '[server]\nallow = ["10.1.2.3/8", "::1", "192.168.0.0/24"]\n'
        'client_key_header = "X-Api-Key"\nadmin_access = "client:crm"\n'
        "shutdown_grace = 0\nworkers = 4\n"
    )
    server = config.loads(text, {}).server
    assert [str(n) for n in server.allow] == ["10.0.0.0/8", "::1/128", "192.168.0.0/24"]
    assert server.client_key_header == "X-Api-Key"
    assert server.admin_access == config.AdminAccess("client", "crm")
    assert server.shutdown_grace == 0.0
    assert isinstance(server.shutdown_grace, float)
    assert server.workers == 4
    loopback = config.loads('[server]\nadmin_access = "loopback"\nshutdown_grace = 2.5\n', {})
    assert (loopback.server.admin_access, loopback.server.shutdown_grace) == (
        config.AdminAccess("loopback"),
        2.5,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('allow = "10.0.0.0/8"\n', "server.allow: must be a list of CIDR networks"),
        ('allow = ["10.0.0.0/33"]\n', "server.allow[0]: not a CIDR network: '10.0.0.0/33'"),
        (
            'allow = ["10.0.0.0/8", "intranet"]\n',
            "server.allow[1]: not a CIDR network: 'intranet'",
        ),
        ('allow = ["fe80::/129"]\n', "server.allow[0]: not a CIDR network: 'fe80::/129'"),
        ("allow = [[10, 8]]\n", "server.allow[0]: not a CIDR network: [10, 8]"),
        ("allow = [10]\n", "server.allow[0]: not a CIDR network: 10"),
        ('allow = ["::1", 4294967295]\n', "server.allow[1]: not a CIDR network: 4294967295"),
        ("allow = [true]\n", "server.allow[0]: not a CIDR network: True"),
        ('host = ""\n', "server.host: must not be empty"),
        ('host = "${HOST:-}"\n', "server.host: must not be empty (after resolving '${HOST:-}')"),
        ('client_key_header = ""\n', "server.client_key_header: must not be empty"),
        ('admin_access = ""\n', "server.admin_access: must not be empty"),
        (
            'admin_access = "${ADMIN:-}"\n',
            "server.admin_access: must not be empty (after resolving '${ADMIN:-}')",
        ),
        ("shutdown_grace = nan\n", "server.shutdown_grace: must be a finite number, got nan"),
        ("shutdown_grace = inf\n", "server.shutdown_grace: must be a finite number, got inf"),
        ('client_key_header = "X Key"\n', "server.client_key_header: not a header name: 'X Key'"),
        (
            'client_key_header = "X-Key:"\n',
            "server.client_key_header: not a header name: 'X-Key:'",
        ),
        ("client_key_header = 1\n", "server.client_key_header: must be a string, got an integer"),
        (
            'admin_access = "everyone"\n',
            "server.admin_access: must be any, loopback or client:NAME, got 'everyone'",
        ),
        (
            'admin_access = "Loopback"\n',
            "server.admin_access: must be any, loopback or client:NAME, got 'Loopback'",
        ),
        ("admin_access = true\n", "server.admin_access: must be a string, got a boolean"),
        ('admin_access = "client:ops"\n', "server.admin_access: no [clients.ops]"),
        (
            "shutdown_grace = -1\n",
            "server.shutdown_grace: must be a number of at least 0, got -1",
        ),
        (
            'shutdown_grace = "30s"\n',
            "server.shutdown_grace: must be a number of at least 0, got '30s'",
        ),
        (
            "shutdown_grace = true\n",
            "server.shutdown_grace: must be a number of at least 0, got True",
        ),
        ("drain_delay = -1\n", "server.drain_delay: must be a number of at least 0, got -1"),
        ('drain_delay = "5s"\n', "server.drain_delay: must be a number of at least 0, got '5s'"),
        ("drain_delay = nan\n", "server.drain_delay: must be a finite number, got nan"),
        ("workers = 0\n", "server.workers: must be a whole number of at least 1, got 0"),
        ("workers = -2\n", "server.workers: must be a whole number of at least 1, got -2"),
        ("workers = 2.0\n", "server.workers: must be a whole number of at least 1, got 2.0"),
        (
            'workers = "4"\n',
            "server.workers: must be a whole number of at least 1, got '4'"
            " (TOML numbers and true/false are written without quotes)",
        ),
        ("workers = true\n", "server.workers: must be a whole number of at least 1, got True"),
    ],
)
def test_invalid_server_key_is_reported_by_key(text: str, expected: str) -> None:
    """Each mistake in [server] is named by its dotted key, with the bad value."""
    assert expected in problems(ROUTE + "[server]\n" + text)


HOST_PROBLEM = "server.host: must be an IP address (IPv6 without brackets) or a host name, got "


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (
            "127.0.0.1:18181",
            "'127.0.0.1:18181' (it looks like host:port: put the port in server.port)",
        ),
        (
            "localhost:8080",
            "'localhost:8080' (it looks like host:port: put the port in server.port)",
        ),
        ("[::1]:8080", "'[::1]:8080' (it looks like host:port: put the port in server.port)"),
        ("[::1]", "'[::1]' (write it without brackets: '::1')"),
        ("http://0.0.0.0", "'http://0.0.0.0'"),
        ("*", "'*'"),
        ("0.0.0.0 ", "'0.0.0.0 '"),
        ("proxy_1.internal", "'proxy_1.internal'"),
        ("-proxy.internal", "'-proxy.internal'"),
        ("a..b", "'a..b'"),
        ("1.2.3", "'1.2.3'"),
        ("256.0.0.1", "'256.0.0.1'"),
        ("0x7f.1", "'0x7f.1'"),
        ("a" * 64 + ".example", f"'{'a' * 64}.example'"),
    ],
)
def test_server_host_must_be_an_address_or_host_name(host: str, expected: str) -> None:
    """server.host that is not an IP address or RFC 1123 host name is refused, with a hint
    when it holds a port or brackets."""
    assert problems(ROUTE + f'[server]\nhost = "{host}"\n') == [HOST_PROBLEM + expected]


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "::1", "fe80::1%eth0", "localhost", "Proxy-1.internal.example."]
)
def test_server_host_accepts_addresses_and_host_names(host: str) -> None:
    """IPv4 and IPv6 addresses (a scope included) and host names load as written."""
    assert config.loads(ROUTE + f'[server]\nhost = "{host}"\n', {}).server.host == host


def test_empty_server_strings_are_not_replaced_by_defaults() -> None:
    """Explicitly empty server strings are each a problem, never the (most open) default."""
    text = ROUTE + '[server]\nhost = ""\nclient_key_header = ""\nadmin_access = "${ADMIN:-}"\n'
    assert problems(text) == [
        "server.host: must not be empty",
        "server.client_key_header: must not be empty",
        "server.admin_access: must not be empty (after resolving '${ADMIN:-}')",
    ]


def test_admin_client_must_be_a_configured_client() -> None:
    """admin_access = client:NAME needs that very client, not just any client."""
    text = ROUTE + CRM + '[server]\nadmin_access = "client:ops"\n'
    assert problems(text) == ["server.admin_access: no [clients.ops]"]
