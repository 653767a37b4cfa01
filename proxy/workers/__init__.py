"""``serve --workers N``: N processes sharing one port through SO_REUSEPORT, as one group.

Each worker has its own token caches and rate limiters (with ``[state] backend =
"local"``), so every limit is divided by N (LocalState.share): the workers together still
never exceed what the upstream allows. supervisor.py starts the workers and restarts one
that dies; view.py answers the group's /-/metrics (merged, proxy/observe/merge.py) and
/-/status (every worker); member.py is a worker's side of that; wire.py the private Unix
sockets between them, in a directory only the group's user can enter.
"""

from .member import GroupLink, announce_ready, serve_own_views
from .supervisor import supervise

__all__ = ["GroupLink", "announce_ready", "serve_own_views", "supervise"]
