"""nginx as the reference reverse proxy of the differential suite.

The settings make nginx the fairest model of a transparent proxy configured like ours:

- ``proxy_http_version 1.1`` with ``Connection ""`` and an ``upstream`` block with
  ``keepalive``: a keep-alive pool, as ours keeps one (and its 4 s idle time).
- ``proxy_request_buffering on`` (nginx's default, and ours for chunked bodies): a body is
  read whole before the upstream request starts.
- ``proxy_buffering off``: answers stream to the client as they arrive, as ours do.
- ``proxy_connect_timeout``/``proxy_read_timeout`` 2 s: the routes' ``timeout``.
- ``proxy_next_upstream`` left at its default (``error timeout``): with one server nginx
  repeats a request only when a kept-alive connection failed before any answer, as ours
  does for idempotent requests.
- Limits raised to ours, so that no case hits a limit of one and not of the other:
  ``client_max_body_size`` 1 GiB (``server.max_buffered_body``), 64 KiB request heads
  (``large_client_header_buffers``) and answer heads (``proxy_buffer_size``).
- ``access_log off``; the error log (level info) stays in the prefix directory, to read when a
  case needs explaining.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import Final

NGINX: Final = Path("/usr/sbin/nginx")
TIMEOUT: Final = 2  # seconds: connect and read, on both proxies

_CONF: Final = """
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout 60s;
    client_header_timeout 10s;
    client_body_timeout 60s;
    client_max_body_size 1g;
    large_client_header_buffers 4 64k;
    upstream origin {{
        server 127.0.0.1:{upstream};
        keepalive 16;
        keepalive_timeout 4s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering on;
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;
            proxy_busy_buffers_size 128k;
            proxy_connect_timeout {timeout}s;
            proxy_read_timeout {timeout}s;
            proxy_send_timeout {timeout}s;
        }}
    }}
}}
"""


# A vendor's rate limit as nginx enforces it: a leaky bucket without burst (a request
# less than 1/rate after the last one admitted is refused). limit_req runs before the
# content phase, so the answer is a static file (a `return` would bypass it).
_ORIGIN: Final = """
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format counted '$status';
    access_log {dir}/access.log counted;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    {http}
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
        {server}
    }}
}}
"""
# A vendor's TLS front that requires a client certificate signed by its CA (mTLS).
_MTLS_SERVER: Final = """
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {clients};
        ssl_verify_client on;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
        }}
"""
_VENDOR_HTTP: Final = """
    limit_req_zone $server_port zone=vendor:1m rate={rate}r/s;
    limit_req_status 429;
"""
_VENDOR_SERVER: Final = """
        location / {{
            limit_req zone=vendor;
            try_files /ok.txt =404;
        }}
        error_page 429 = @throttled;
        location @throttled {{
            add_header Retry-After {retry_after} always;
            return 429 "slow down";
        }}
"""


def require_nginx() -> None:
    """Fail (never skip) with what to do when nginx is not installed."""
    if not os.access(NGINX, os.X_OK):
        raise AssertionError(
            f"{NGINX} is missing: the differential suite compares the proxy with nginx. "
            "`make test` installs it (apt-get install nginx-light, as root); on another "
            f"system install nginx so that {NGINX} exists."
        )


class ReferenceNginx:
    """One nginx master in the foreground (``daemon off``) with its own prefix directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    async def start(self, upstream_port: int) -> int:
        """nginx as the reference reverse proxy in front of ``upstream_port``."""
        return await self._run(_CONF, upstream=upstream_port, timeout=TIMEOUT)

    async def vendor(self, rate: int, retry_after: int) -> int:
        """nginx as a throttling vendor: ``limit_req`` at ``rate`` requests a second, no
        burst, 429 with ``Retry-After`` past it; each request logged to access_log()."""
        return await self.origin(
            {"ok.txt": b"ok\n"},
            http=_VENDOR_HTTP.format(rate=rate),
            server=_VENDOR_SERVER.format(retry_after=retry_after),
        )

    async def origin(
        self,
        files: dict[str, bytes],
        *,
        http: str = "",
        server: str = "",
        template: str = _ORIGIN,
    ) -> int:
        """nginx as an origin server: ``files`` served from its root, ``http`` and
        ``server`` added to those blocks (each request logged to access_log())."""
        (self.dir / "www").mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (self.dir / "www" / name).write_bytes(content)

        def literal(text: str) -> str:  # inserted as is: _run formats the template
            return text.replace("{", "{{").replace("}", "}}")

        template = template.replace("{http}", literal(http)).replace("{server}", literal(server))
        return await self._run(template)

    async def mtls_front(
        self, cert: Path, key: Path, clients: Path, upstream_port: int | None
    ) -> int:
        """nginx as a vendor's HTTPS front (``cert``/``key``) that passes to
        ``upstream_port`` only requests with a client certificate signed by ``clients``."""
        server = _MTLS_SERVER.format(cert=cert, key=key, clients=clients, upstream=upstream_port)
        template = _ORIGIN.replace("{port};", "{port} ssl;", 1)
        return await self.origin({}, server=server, template=template)

    async def balancer(self, conf: str, servers: dict[str, int]) -> int:
        """nginx run from a shipped config (deploy/compose/nginx.conf) as written, but on
        loopback: its ``listen`` on a free port, each ``host:port`` of ``servers`` pointed
        at 127.0.0.1 and the port given, its files in this prefix directory."""
        for address, port in servers.items():
            conf = conf.replace(f"server {address}", f"server 127.0.0.1:{port}")
        conf = conf.replace("{", "{{").replace("}", "}}")
        conf = re.sub(r"listen \d+;", "listen 127.0.0.1:{port};", conf)
        conf = conf.replace(
            "http {{",
            "http {{\n    client_body_temp_path {dir}/body;\n    proxy_temp_path {dir}/proxy;"
            "\n    access_log off;",
            1,
        )
        return await self._run("{user}\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n" + conf)

    def access_log(self) -> list[str]:
        path = self.dir / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    async def _run(self, template: str, **fields: object) -> int:
        require_nginx()
        self.dir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        conf = self.dir / "nginx.conf"
        # As root the workers would run as "nobody" and could not write the temp dirs here.
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(template.format(dir=self.dir, user=user, port=self.port, **fields))
        self.process = subprocess.Popen(
            [str(NGINX), "-p", str(self.dir), "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        async with asyncio.timeout(10):
            while True:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    return self.port
                if self.process.poll() is not None:
                    assert self.process.stderr is not None
                    raise AssertionError(f"nginx failed: {self.process.stderr.read()!r}")
                await asyncio.sleep(0.005)

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
