"""What this installation of the proxy is: its distribution's name and version."""

from __future__ import annotations

import functools
from typing import Final

# The name on PyPI and of the console script; the import package stays `proxy` ("proxy"
# and "authproxy" are other projects' names there).
DISTRIBUTION: Final = "vendor-auth-proxy"
UNKNOWN: Final = "0+unknown"


@functools.cache
def version() -> str:
    """The installed distribution's version (its metadata, as pip wrote it); ``0+unknown``
    for a source tree put on sys.path without being installed."""
    # Imported here, not at the top: importlib.metadata costs ~40 ms to import, and every
    # command that never asks for the version (each worker of a group, `check`) would pay.
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNKNOWN
