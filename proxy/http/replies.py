"""The one place a ProxyError becomes the answer its client gets.

Every answer the proxy makes itself (a refusal of the server, of access or routing, an
upstream failure) is this JSON body with an ``X-Proxy-Error`` header, so a client can tell
ours from an upstream's, which pass through untouched.
"""

from __future__ import annotations

import json
import math

from ..errors import ProxyError
from .server import Reply


def error_response(error: ProxyError, request_id: str) -> Reply:
    """The JSON body and X-Proxy-Error header every proxy-made error carries."""
    body = json.dumps({"error": error.code, "message": error.message, "request_id": request_id})
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "X-Proxy-Error": error.code,
        "X-Request-ID": request_id,
    }
    if error.headers:
        headers.update(error.headers)
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return Reply(error.status, headers, body.encode())
