#!/usr/bin/env python3
"""The image's health check: exit 0 when the proxy on this host answers 200 on /-/ready
(every credential in use holds a valid token), 1 otherwise.

It asks http://127.0.0.1:$PROXY_PORT/-/ready (8080 when unset); PROXY_READY_URL names
another address (an https listener: the certificate is not checked, this is the proxy
asking itself over loopback). Standard library only, so it runs in any image.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("PROXY_PORT") or "8080"
    url = os.environ.get("PROXY_READY_URL") or f"http://127.0.0.1:{port}/-/ready"
    context = ssl._create_unverified_context() if url.startswith("https:") else None  # noqa: S323
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as answer:  # noqa: S310
            status = answer.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError as error:
        print(f"not ready: {url}: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"not ready: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
