"""Secrets from files (${file:PATH}) and references in number or boolean positions: what
they load as, what a problem says (never a file's content), and a secret rotated on disk
taken up by a SIGHUP of a real `serve`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from proxy import config as config_module
from proxy.config import ClientCredentialsAuth
from proxy.errors import ConfigError
from proxy.sandbox import SandboxSettings, build_sandbox_app

from .conftest import LEAK_WATCH, ProxyFactory
from .processes import start_proxy
from .test_credentials import DEMO_CONFIG, Sandbox

FILE_SECRET = "from-a-file-0123456789"
ROTATED = "rotated-travtus-secret-0123"
LEAK_WATCH.update({FILE_SECRET, ROTATED})

ROUTE = '[[routes]]\nprefix = "/a"\nupstream = "http://127.0.0.1:9"\nauth = "a"\n'


def auth(secret: str, client_id: str = "id") -> str:
    return (
        '[auth.a]\ntype = "client_credentials"\ntoken_url = "http://127.0.0.1:9/t"\n'
        f'client_id = "{client_id}"\nclient_secret = "{secret}"\n'
    )


def write(directory: Path, text: str, name: str = "routes.toml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_module.load(path, env or {})
    return info.value.problems


def client_secret(path: Path, env: dict[str, str] | None = None) -> str:
    auth = config_module.load(path, env or {}).auth["a"]
    assert isinstance(auth, ClientCredentialsAuth)
    return auth.client_secret.reveal()


# -- ${file:PATH} ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (FILE_SECRET, FILE_SECRET),
        (f"{FILE_SECRET}\n", FILE_SECRET),  # echo, kubectl create secret --from-file
        (f"{FILE_SECRET}\r\n", FILE_SECRET),  # saved on Windows
        (f"{FILE_SECRET}\n\n", f"{FILE_SECRET}\n"),  # one newline only
        ("${HOME}-x", "${HOME}-x"),  # a file's content is not resolved again
    ],
)
def test_a_file_gives_its_content_less_one_trailing_newline(
    tmp_path: Path, content: str, expected: str
) -> None:
    """${file:PATH} is the file's content without one trailing line break."""
    (tmp_path / "secret").write_text(content, newline="")
    config = write(tmp_path, ROUTE + auth(f"${{file:{tmp_path / 'secret'}}}"))
    assert client_secret(config) == expected


def test_a_relative_path_is_read_from_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative ${file:...} is found beside the config, wherever the proxy was started."""
    write(tmp_path / "conf" / "secrets", f"{FILE_SECRET}\n", "travtus")
    config = write(tmp_path / "conf", ROUTE + auth("${file:secrets/travtus}"))
    monkeypatch.chdir(tmp_path)
    assert client_secret(config) == FILE_SECRET


def test_a_file_may_be_part_of_a_string(tmp_path: Path) -> None:
    """A file reference mixes with text and variables, as ${VAR} does."""
    write(tmp_path, "h.example\n", "host")
    config = write(
        tmp_path,
        '[[routes]]\nprefix = "/a"\nupstream = "https://${file:host}:${PORT}/v1"\n',
    )
    upstream = config_module.load(config, {"PORT": "8443"}).routes[0].upstream
    assert upstream.url == "https://h.example:8443/v1"


def test_a_missing_file_names_the_key_and_the_path(tmp_path: Path) -> None:
    """A missing file is one problem naming the key and the absolute path, and how to make
    it optional."""
    config = write(tmp_path, ROUTE + auth("${file:secrets/nope}"))
    assert problems(config) == [
        f"auth.a.client_secret: cannot read file '{tmp_path}/secrets/nope': it does not "
        "exist (write ${file:secrets/nope:-default} to make it optional)"
    ]


def test_a_missing_file_takes_its_default(tmp_path: Path) -> None:
    """${file:PATH:-default} is the default when the file does not exist."""
    config = write(tmp_path, ROUTE + auth("${file:nope:-" + FILE_SECRET + "}"))
    assert client_secret(config) == FILE_SECRET


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe" + FILE_SECRET.encode(), "is not UTF-8 text"),
        (b"x" * (64 * 1024 + 1), "is larger than 64 KiB"),
    ],
)
def test_a_file_that_is_no_secret_is_refused_without_its_content(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    """A file that is not UTF-8 text, or too big for a secret, is a problem naming the key and
    the path, never showing the content."""
    (tmp_path / "secret").write_bytes(content)
    config = write(tmp_path, ROUTE + auth("${file:secret}"))
    assert problems(config) == [f"auth.a.client_secret: file '{tmp_path}/secret' {expected}"]


def test_a_directory_a_fifo_or_empty_path_is_refused(tmp_path: Path) -> None:
    """A directory or a FIFO is not a secret file (opening a FIFO would wait for a writer
    and freeze check, start-up or a reload), and ${file:} names nothing: each is a
    problem of its key, even with a default."""
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    text = ROUTE + auth("${file:dir:-x}").replace('"id"', '"${file:}"')
    config = write(tmp_path, text + 'scope = "${file:fifo}"\n')
    assert problems(config) == [
        "auth.a.client_id: ${file:} names no file (write ${file:/run/secrets/NAME})",
        f"auth.a.client_secret: cannot read file '{tmp_path}/dir': not a regular file",
        f"auth.a.scope: cannot read file '{tmp_path}/fifo': not a regular file",
    ]


def test_a_problem_never_shows_what_a_file_holds(tmp_path: Path) -> None:
    """A check that echoes the value it refuses shows *** for what came from a file."""
    write(tmp_path, f"{FILE_SECRET}\n", "scope")
    config = write(
        tmp_path, ROUTE + auth("s").replace('"id"', '"id"\nclient_auth = "${file:scope}"')
    )
    (found,) = problems(config)
    assert found.startswith("auth.a.client_auth: must be one of post, basic, got")
    assert FILE_SECRET not in found


@pytest.mark.parametrize(
    "held",
    ["https://TOPSECRET-up.example/v1\n\n", "TOPSECRET\tpart", "TOP'SECRET\"x"],
)
def test_a_problem_never_shows_a_file_even_escaped(tmp_path: Path, held: str) -> None:
    """A check quoting the value with repr() escapes a tab or a newline: the file's content
    is not shown that way either, nor any part of it."""
    (tmp_path / "up").write_text(held)
    config = write(tmp_path, '[[routes]]\nprefix = "/a"\nupstream = "http://h/${file:up}"\n')
    (found,) = problems(config)
    assert "TOPSECRET" not in found
    assert "SECRET" not in found


async def test_the_redactor_learns_every_value_read_from_a_file(
    tmp_path: Path, make_proxy: ProxyFactory
) -> None:
    """What a file gives any string key (client_id too) is among the secrets the log
    redactor is told."""
    write(tmp_path, f"{FILE_SECRET}\n", "id")
    proxy = await make_proxy.serve(ROUTE + auth("s3cret-value", f"${{file:{tmp_path / 'id'}}}"))
    assert FILE_SECRET in proxy.state.runtime.secrets()


# -- a rotated secret, SIGHUP -----------------------------------------------------------------


@pytest.fixture
async def rotated_sandbox(aiohttp_server: AiohttpServer) -> AsyncIterator[Sandbox]:
    """The sandbox with Travtus' client secret rotated: the demo's secret is refused."""
    app = build_sandbox_app(SandboxSettings(travtus_client_secret=ROTATED))
    server = await aiohttp_server(app, host="127.0.0.1")
    async with aiohttp.ClientSession() as client:
        yield Sandbox(f"http://127.0.0.1:{server.port}", client)


async def token_statuses(sandbox: Sandbox) -> list[tuple[str, int | None]]:
    return [
        (e["fields"]["client_secret"], e["status"]) for e in await sandbox.log("travtus", "token")
    ]


async def test_sighup_reads_a_rotated_secret_file(rotated_sandbox: Sandbox, tmp_path: Path) -> None:
    """serve reads client_secret from its file; after the file is rotated, a SIGHUP makes the
    next token request send the new secret, and no log line shows either."""
    old = "sandbox-travtus-secret"
    secret = write(tmp_path / "secrets", f"{old}\n", "travtus")
    text = DEMO_CONFIG.replace("${SANDBOX_URL:-http://127.0.0.1:9000}", rotated_sandbox.url)
    text = text.replace(f'client_secret = "{old}"', 'client_secret = "${file:secrets/travtus}"')
    config = write(tmp_path, text)
    proxy = await start_proxy(config, "--log-level", "debug")
    try:
        async with asyncio.timeout(5):
            while not await token_statuses(rotated_sandbox):
                await asyncio.sleep(0.05)
        secret.write_text(f"{ROTATED}\n")
        proxy.process.send_signal(signal.SIGHUP)
        async with aiohttp.ClientSession() as session, asyncio.timeout(5):
            while True:
                async with session.post(
                    f"{proxy.url}/travtus/messages/", json={"to": "+15550100", "body": "hi"}
                ) as answer:
                    if answer.status == 201:
                        break
                await asyncio.sleep(0.05)
    finally:
        assert await proxy.stop() == 0
    assert await token_statuses(rotated_sandbox) == [
        (old, 400),
        (ROTATED, 200),
    ]  # Cognito: invalid_client
    output = "\n".join(proxy.lines)
    assert "config_loaded" in output
    assert old not in output
    assert ROTATED not in output


# -- references where a number or a boolean belongs -------------------------------------------

TYPED = (
    '[server]\nport = "${PORT:-8080}"\nworkers = "${WORKERS:-2}"\n'
    '[[routes]]\nprefix = "/a"\nupstream = "http://127.0.0.1:9"\n'
    'request_buffering = "${BUFFER:-true}"\n'
    'rate_limit = { rate = "${RATE:-10}", per = "${PER:-0.5}" }\n'
    '[state]\nfallback_share = "${SHARE:-auto}"\n'
)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (8080, 2, True, 10.0, 0.5, None)),
        (
            {"PORT": "9000", "WORKERS": "4", "BUFFER": "False", "RATE": "2.5", "PER": "60"},
            (9000, 4, False, 2.5, 60.0, None),
        ),
        ({"SHARE": "3", "RATE": "1e3", "PORT": "81"}, (81, 2, True, 1000.0, 0.5, 3)),
    ],
)
def test_a_reference_in_a_number_or_boolean_position_is_converted(
    env: dict[str, str], expected: tuple[object, ...]
) -> None:
    """A string that is wholly one reference takes the type its key needs: whole numbers,
    numbers, true/false (any case), or a word the key takes itself ("auto")."""
    config = config_module.loads(TYPED, env)
    route = config.routes[0]
    assert route.rate_limit is not None
    found = (
        config.server.port,
        config.server.workers,
        route.request_buffering,
        route.rate_limit.rate,
        route.rate_limit.per,
        config.state.fallback_share,
    )
    assert found == expected
    assert [type(v) for v in found] == [type(v) for v in expected]


def test_a_reference_to_a_file_in_a_number_position(tmp_path: Path) -> None:
    """A number may come from a file too (one trailing newline dropped)."""
    write(tmp_path, "9001\n", "port")
    config = write(tmp_path, '[server]\nport = "${file:port}"\n' + ROUTE.replace("auth", "#"))
    assert config_module.load(config, {}).server.port == 9001


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PORT": "abc"}, "server.port: PORT is 'abc', not a whole number"),
        ({"PORT": "80.5"}, "server.port: PORT is '80.5', not a whole number"),
        # As --port takes them: plain digits, no sign, separator or spaces.
        ({"PORT": " 81 "}, "server.port: PORT is ' 81 ', not a whole number"),
        ({"PORT": "9_000"}, "server.port: PORT is '9_000', not a whole number"),
        ({"PORT": "+80"}, "server.port: PORT is '+80', not a whole number"),
        ({"PORT": "70000"}, "server.port: must be an integer from 0 to 65535, got 70000"),
        ({"WORKERS": "0"}, "server.workers: must be a whole number of at least 1, got 0"),
        ({"BUFFER": "yes"}, "routes[/a].request_buffering: BUFFER is 'yes', not true or false"),
        ({"RATE": "fast"}, "routes[/a].rate_limit.rate: RATE is 'fast', not a number"),
        ({"PER": "nan"}, "routes[/a].rate_limit.per: PER is 'nan', not a number"),
        ({"SHARE": "many"}, "state.fallback_share: SHARE is 'many', not a whole number"),
    ],
)
def test_a_reference_that_is_not_of_the_keys_type_says_why(
    env: dict[str, str], expected: str
) -> None:
    """A value of the wrong type is refused naming the key, the variable and its value, and
    what the key needs; a converted value still meets the key's range."""
    with pytest.raises(ConfigError) as info:
        config_module.loads(TYPED, env)
    assert info.value.problems == [expected]


def test_a_default_or_file_of_the_wrong_type_says_so(tmp_path: Path) -> None:
    """A default that is not of the key's type names the unset variable; a file is named,
    its content never shown."""
    write(tmp_path, f"{FILE_SECRET}\n", "workers")
    config = write(
        tmp_path,
        '[server]\nport = "${PORT:-http}"\nworkers = "${file:workers}"\n'
        + ROUTE.replace("auth", "#"),
    )
    assert problems(config) == [
        "server.port: PORT is not set and its default 'http' is not a whole number",
        f"server.workers: file '{tmp_path}/workers' does not hold a whole number",
    ]


@pytest.mark.parametrize("value", ['"8080"', '"${PORT}0"', '"${PORT}${PORT}"', '"port ${PORT}"'])
def test_only_a_string_that_is_wholly_one_reference_is_converted(value: str) -> None:
    """A quoted literal, or a reference with text around it, stays a string, which a number
    key refuses: TOML writes numbers without quotes."""
    text = f"[server]\nport = {value}\n" + '[[routes]]\nprefix = "/a"\nupstream = "http://h"\n'
    with pytest.raises(ConfigError) as info:
        config_module.loads(text, {"PORT": "80"})
    hint = " (TOML numbers and true/false are written without quotes)"
    assert info.value.problems == [
        "server.port: must be an integer from 0 to 65535, got "
        + repr(value.strip('"'))
        + (hint if value == '"8080"' else "")
    ]


def test_a_missing_variable_in_a_number_position_is_one_problem() -> None:
    """An unset variable without a default is reported once, as anywhere else."""
    with pytest.raises(ConfigError) as info:
        config_module.loads(TYPED.replace("${PORT:-8080}", "${PORT}"), {})
    assert info.value.problems == [
        "server.port: environment variable PORT is not set (write ${PORT:-default} to make "
        "it optional)"
    ]


# -- problems name routes by prefix, and one typo is one problem -------------------------------

CLIENTS = (
    '\n[clients.crm]\nkey = "crm-key-0123456789abcdef"\nroutes = ["/travtus", "/travis"]\n'
    'auth = { "/travis" = "travis" }\n\n[clients.ops]\nkey = "ops-key-0123456789abcdef"\n'
)
DEMO = DEMO_CONFIG.replace("[server]\n", '[server]\nadmin_access = "client:ops"\n') + CLIENTS
KEYCLOAK = "${SANDBOX_URL:-http://127.0.0.1:9000}/keycloak"


def test_the_demo_with_clients_is_valid() -> None:
    """The config the typos below are made in is valid as it stands."""
    assert len(config_module.loads(DEMO, {}).clients) == 2


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'type = "password"',
            'type = "pasword"',
            "auth.travis.type: must be one of client_credentials, password, travelyzer, "
            "got 'pasword'",
        ),
        ('type = "password"', 'typ = "password"', "auth.travis.typ: unknown key"),
        (f'token_url = "{KEYCLOAK}', f'token_ur = "{KEYCLOAK}', "auth.travis.token_ur: unknown"),
        (
            'prefix = "/travis"',
            'prefix = "travis"',
            "routes[1].prefix: must start with '/', got 'travis'",
        ),
        (
            'upstream = "${SANDBOX_URL:-http://127.0.0.1:9000}/travis"',
            'upstream = "ftp://x"',
            "routes[/travis].upstream: must be an http:// or https:// URL, got 'ftp://x'",
        ),
        (
            'key = "ops-key-0123456789abcdef"',
            'keys = "ops-key-0123456789abcdef"',
            "clients.ops.keys: unknown key (allowed: key, routes, rate_limit, auth); "
            "did you mean key?",
        ),
        ("[[routes]]", "[[route]]", "route: unknown key"),
        ("[auth.travis]", "[auths.travis]", "auths: unknown key"),
        (
            'auth = "travis"',
            'auth = "travsi"',
            "routes[/travis].auth: no [auth.travsi] table (defined: travelyzer, travis, travtus)",
        ),
    ],
)
def test_a_typo_in_one_table_is_one_problem(old: str, new: str, expected: str) -> None:
    """A table refused for a typo is the one problem: routes, clients and admin_access that
    name it (or a misspelt key it needed) hear nothing more about it."""
    assert old in DEMO
    with pytest.raises(ConfigError) as info:
        config_module.loads(DEMO.replace(old, new, 1), {})
    (found,) = info.value.problems
    assert found.startswith(expected)


def test_a_misspelt_required_key_is_named_once_with_the_key_meant() -> None:
    """client_secert for client_secret is one line that names both, not a second line saying
    client_secret is required."""
    with pytest.raises(ConfigError) as info:
        config_module.loads(DEMO.replace("client_secret", "client_secert", 1), {})
    (found,) = info.value.problems
    assert found.startswith("auth.travtus.client_secert: unknown key (allowed: type, ")
    assert found.endswith("; did you mean client_secret?")


@pytest.mark.parametrize(
    ("table", "typo", "meant"),
    [
        ("[server]", "prot = 8081", "port"),  # two letters swapped
        ("[server]", 'hots = "0.0.0.0"', "host"),  # not hosts: the same length wins a tie
        ("[server]", "workres = 2", "workers"),
        ("[server]", "bogus = 1", None),  # nothing close: no guess
    ],
)
def test_a_typo_is_told_the_key_it_most_likely_meant(
    table: str, typo: str, meant: str | None
) -> None:
    """Unknown keys get the allowed key one edit away (a swap counts as one), or no guess."""
    text = f"{table}\n{typo}\n" + '[[routes]]\nprefix = "/a"\nupstream = "http://h"\n'
    with pytest.raises(ConfigError) as info:
        config_module.loads(text, {})
    (found,) = info.value.problems
    if meant is None:
        assert "did you mean" not in found
    else:
        assert found.endswith(f"; did you mean {meant}?")


def test_references_to_a_table_that_is_not_there_are_still_reported() -> None:
    """With every table whole, a reference to a route or auth table that does not exist is
    a problem, as before."""
    text = DEMO.replace('routes = ["/travtus", "/travis"]', 'routes = ["/travtus", "/trav"]')
    text = text.replace('"/travis" = "travis"', '"/travis" = "travsi"')
    text = text.replace("client:ops", "client:opz")
    with pytest.raises(ConfigError) as info:
        config_module.loads(text, {})
    assert info.value.problems == [
        "clients.crm.routes: no such route prefix: /trav",
        "clients.crm.auth.'/travis': no [auth.travsi] table",
        "server.admin_access: no [clients.opz]",
    ]


def test_routes_are_named_by_prefix_unless_the_prefix_is_bad_or_taken() -> None:
    """routes[/a] when the prefix is good (after ${VAR}), routes[N] when it is refused or
    a duplicate."""
    text = (
        '[[routes]]\nprefix = "${P:-/a}"\nupstream = "ftp://x"\n'
        '[[routes]]\nprefix = "b"\nupstream = "ftp://x"\n'
        '[[routes]]\nprefix = "/a"\nupstream = "http://h"\n'
    )
    with pytest.raises(ConfigError) as info:
        config_module.loads(text, {})
    assert info.value.problems == [
        "routes[/a].upstream: must be an http:// or https:// URL, got 'ftp://x'",
        "routes[1].prefix: must start with '/', got 'b'",
        "routes[1].upstream: must be an http:// or https:// URL, got 'ftp://x'",
        "routes[2].prefix: duplicate prefix '/a' (also routes[0])",
    ]


# -- check ------------------------------------------------------------------------------------


def test_check_prints_the_listen_address_clients_and_limits(tmp_path: Path) -> None:
    """`python -m proxy check` says where the proxy listens, which clients it knows and how
    they authenticate, and every limit with its scope; no key or secret, from a file or not."""
    write(tmp_path / "secrets", f"{FILE_SECRET}\n", "crm")
    write(tmp_path / "secrets", f"{ROTATED}\n", "travtus")
    text = DEMO.replace("port = 8080\n", 'port = 0\nworkers = "${WORKERS:-1}"\n')
    text = text.replace('"crm-key-0123456789abcdef"', '"${file:secrets/crm}"')
    text = text.replace('"sandbox-travtus-secret"', '"${file:secrets/travtus}"')
    text = text.replace(
        'key = "${file:secrets/crm}"\n',
        'key = "${file:secrets/crm}"\nrate_limit = { rate = 5, scope = "process" }\n',
    )
    text = text.replace(
        'prefix = "/travis"\n',
        'prefix = "/travis"\nrate_limit = { rate = 20, per = 2, burst = 30, max_wait = 0 }\n',
    )
    config = write(tmp_path, text)
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "WORKERS": "3"},
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("valid, 3 route(s), 3 auth table(s), 2 client(s)")
    expected = [
        "  listen: http://127.0.0.1:0 (any free port), "
        "3 worker processes sharing the port (workers = 3)",
        "  /travis -> http://127.0.0.1:9000/travis (auth=travis)",
        "  admin endpoints (/-/, /-/status, /-/metrics): client ops",
        "  clients: 2, each sending its key in X-Proxy-Key",
        "    crm: key set, routes /travtus, /travis; auth travis on /travis",
        "    ops: key set, every route",
        "  limits:",
        "    route /travis: 20 per 2 s, burst 30, max_wait 0 s, scope global",
        "    auth travtus: 10000 per 1 s, burst 5000, max_wait 5 s, scope global",
        "    client crm: 5 per 1 s, burst 5, max_wait 5 s, scope process",
        "    auth travelyzer token requests: at most 100 per 60 s",
    ]
    assert [line for line in lines if line in expected] == expected
    for secret in (FILE_SECRET, ROTATED, "ops-key-0123456789abcdef", "sandbox-travis-password"):
        assert secret not in result.stdout + result.stderr


def test_check_says_when_no_client_is_configured(tmp_path: Path) -> None:
    """Without [clients], check says anyone who reaches the address may use every route, and
    that there are no limits."""
    config = write(
        tmp_path, '[server]\nhost = "::1"\n[[routes]]\nprefix = "/a"\nupstream = "http://h"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "  listen: http://[::1]:8080, one process (workers = 1)\n" in result.stdout
    assert (
        "  clients: none (anyone who can reach the listen address may use every route)\n"
        in result.stdout
    )
    assert "  limits: none\n" in result.stdout
