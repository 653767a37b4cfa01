"""What processes will share: rate-limit capacity, route pauses, tokens, health.

Today one process holds it all (:class:`~proxy.state.local.LocalState`); a fleet will keep
it in Redis behind the same Protocols (:mod:`proxy.state.base`). The policy modules
(limits, retry, auth) decide; the state only stores and counts.
"""
