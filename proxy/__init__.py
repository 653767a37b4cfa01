"""An authenticating reverse proxy for token-protected vendor APIs.

The layers, bottom up; a module imports only from its own layer and those below it
(tests/test_layers.py holds the code to that):

    errors.py, clock.py  exceptions and time, used everywhere; release.py (name, version)
    http/        the wire: our own HTTP/1.1 legs over llhttp (server.py to clients,
                 client.py to upstreams behind transport.py's Transport), flow control
    config/      routes.toml -> frozen dataclasses, each key declared once
    state/       what processes will share: limit capacity, route pauses, tokens
    observe/     logs, metrics, request accounting
    policy       routing.py (raw target -> route), access.py (who may ask), limits.py,
                 retry.py and adaptive.py (429s, pauses, the learned rate), headers.py,
                 redirects.py, bodies.py, auth/ (one module per token scheme, the policy)
    pipeline     upstream.py (admit -> token -> send -> retry), forward.py (route ->
                 exchange -> stream back)
    process      runtime.py (the composition root: builds all of the above from one
                 config), app.py (lifecycle, reload, /-/ endpoints), workers/, fds.py,
                 notify.py (systemd readiness), arguments.py, __main__.py (the command
                 line), demo.py
    sandbox/     the simulated vendors, imported only when their command runs
"""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # proxy.__version__ on demand (release.py says why it is not read at import).
    if name == "__version__":
        from .release import version

        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
