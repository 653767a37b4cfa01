"""The wire: our own HTTP/1.1 legs over llhttp.

``server`` speaks to clients, ``client`` to upstreams (pooled connections); ``transport``
holds the Protocols the policy reaches an upstream through (``client.Pool`` is the real
one); ``flow`` is the write flow control both legs share, ``authority`` the host-name rules
of Host headers and listen addresses, ``replies`` the answer a client gets for one of the
proxy's own errors. Nothing here knows about routes, tokens or limits.
"""
