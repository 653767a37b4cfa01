"""nginx in two roles: the fast upstream every scenario talks to, and the reference reverse
proxy (static Authorization header, keep-alive pool) that ours is compared with."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .procs import free_port

BODY = '{"ok":true,"source":"nginx-upstream","items":[1,2,3]}'
STATIC_TOKEN = "bench-static-token"  # noqa: S105 - a fixed value for the nginx reference

_COMMON = """
worker_processes {workers};
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
{servers}
}}
"""

UPSTREAM = """
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
        location /big {{
            root {files};
            sendfile on;
        }}
    }}
"""

REVERSE_PROXY = """
    upstream origin {{ server 127.0.0.1:{upstream}; keepalive 512; }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {token}";
        }}
    }}
"""


class Nginx:
    """One nginx master (daemon off) with its own prefix directory."""

    def __init__(self, directory: Path, servers: str, workers: int = 1) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "nginx.conf"
        self.conf.write_text(_COMMON.format(dir=directory, servers=servers, workers=workers))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, port: int) -> None:
        self.process = subprocess.Popen(  # noqa: S603
            ["/usr/sbin/nginx", "-p", str(self.dir), "-c", str(self.conf), "-g", "daemon off;"],
            stderr=subprocess.PIPE,
        )
        import socket

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return
            if self.process.poll() is not None:
                why = self.process.stderr.read() if self.process.stderr else b""
                raise RuntimeError(f"nginx failed: {why!r}")
            time.sleep(0.05)
        raise RuntimeError("nginx did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@contextlib.contextmanager
def upstream(directory: Path, big_bytes: int) -> Iterator[tuple[Nginx, int]]:
    """The fast JSON upstream; ``/big/file`` is a sparse file of ``big_bytes`` bytes."""
    files = directory / "files"
    (files / "big").mkdir(parents=True, exist_ok=True)
    with (files / "big" / "file").open("wb") as big:
        big.truncate(big_bytes)
    port = free_port()
    server = Nginx(directory, UPSTREAM.format(port=port, body=BODY, files=files))
    server.start(port)
    try:
        yield server, port
    finally:
        server.stop()


@contextlib.contextmanager
def reverse_proxy(directory: Path, upstream_port: int) -> Iterator[tuple[Nginx, int]]:
    port = free_port()
    server = Nginx(
        directory, REVERSE_PROXY.format(port=port, upstream=upstream_port, token=STATIC_TOKEN)
    )
    server.start(port)
    try:
        yield server, port
    finally:
        server.stop()
