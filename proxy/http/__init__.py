"""The wire: our own HTTP/1.1 legs over llhttp.

``server`` speaks to clients, ``client`` to upstreams (pooled connections); ``flow`` is the
write flow control both share, ``authority`` the host-name rules of Host headers and listen
addresses, ``replies`` the answer a client gets for one of the proxy's own errors. Nothing
here knows about routes, tokens or limits.
"""
