"""Processes of a fleet sharing tokens through one real Redis, as the token tests need them:
each member has its own RedisLink and Fleet (a separate process, as far as Redis can
tell), and token issuers that count what they hand out and refuse what Keycloak refuses."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis import asyncio as aioredis

from proxy import config
from proxy.auth import Grant, TokenEndpointError, TokenManager
from proxy.clock import MONOTONIC, Clock
from proxy.state.fleet import Fleet
from proxy.state.redis_link import RedisLink
from proxy.state.redis_tokens import RedisTokenStore
from proxy.state.sealing import Sealer

from .redisserver import RedisServer

CLIENT_SECRET = "fleet-client-secret-0123456789"  # test credentials
PASSWORD = "fleet-user-password-9876543210"
TIMEOUT = 0.2  # the link's timeout: each call ends within TIMEOUT * GUARD


def auth_table(extra: str = "") -> config.AuthConfig:
    """A Keycloak-style password grant with a confidential client."""
    cfg = config.loads(
        '[[routes]]\nprefix = "/a"\nupstream = "http://h"\nauth = "t"\n'
        '[auth.t]\ntype = "password"\ntoken_url = "http://idp/token"\nclient_id = "c"\n'
        f'client_secret = "{CLIENT_SECRET}"\nusername = "u"\npassword = "{PASSWORD}"\n'
        f"timeout = {{ connect = 1, read = 1 }}\n{extra}",
        {},
    )
    return cfg.auth["t"]


class Members:
    """Stores of one credential, each over its own link to ``server``; all closed at the
    end. ``redis`` is a plain client for looking at what the fleet wrote."""

    def __init__(self, server: RedisServer, auth: config.AuthConfig) -> None:
        self.server = server
        self.auth = auth
        self.sealer = Sealer.for_credential(auth, None)  # what every process derives
        self.redis = aioredis.Redis.from_url(server.url)
        self._links: list[RedisLink] = []
        self.stores: list[RedisTokenStore] = []
        self._managers: list[TokenManager] = []

    def store(
        self,
        *,
        clock: Clock = MONOTONIC,
        link_clock: Clock = MONOTONIC,
        sealer: Sealer | None = None,
        wall: Callable[[], float] | None = None,
        fallback_share: int | None = None,
    ) -> RedisTokenStore:
        link = RedisLink(self.server.url, TIMEOUT, link_clock)
        self._links.append(link)
        fleet = Fleet(
            link, "authproxy:", fallback_share=fallback_share, clock=clock, wall=wall or time.time
        )
        store = RedisTokenStore(fleet, self.auth, sealer or self.sealer)
        self.stores.append(store)
        return store

    def manager(self, scheme: Issuer, store: RedisTokenStore | None = None) -> TokenManager:
        tokens = TokenManager(
            self.auth, scheme, store=store or self.store(), jitter=lambda: 0.0, max_wait=3.0
        )
        self._managers.append(tokens)
        return tokens

    async def keys(self) -> list[bytes]:
        return [key async for key in self.redis.scan_iter("*")]

    async def close(self) -> None:
        for tokens in self._managers:
            await tokens.close()
        for store in self.stores:
            await store.close()
        for link in self._links:
            await link.close()
        await self.redis.aclose()


@dataclass
class Issuer:
    """A token endpoint in a box, Keycloak's way: every answer a new access token and a new
    refresh token; a refresh token is redeemable once (again: ``invalid_grant``), as are
    those revoked by the test. ``fail`` lists outcomes to raise first; ``gate`` holds every
    request until set."""

    lifetime: float = 300.0
    refresh_lifetime: float | None = 1800.0
    fail: list[TokenEndpointError] = field(default_factory=list)
    gate: asyncio.Event | None = None
    presented: list[str | None] = field(default_factory=list)  # per request, in order
    issued: list[str] = field(default_factory=list)  # access tokens
    refreshes: list[str] = field(default_factory=list)  # refresh tokens
    refused: int = 0  # invalid_grant answers
    _live: set[str] = field(default_factory=set)
    _count: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def requests(self) -> int:
        return len(self.presented)

    def revoke(self, refresh: str) -> None:
        self._live.discard(refresh)

    async def fetch(self, refresh_token: str | None) -> Grant:
        self.presented.append(refresh_token)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise self.fail.pop(0)
        if refresh_token is not None:
            if refresh_token not in self._live:
                self.refused += 1
                raise TokenEndpointError("invalid_grant", rejected=True, status=400)
            self._live.discard(refresh_token)
        n = next(self._count)
        access, refresh = f"fleet-access-{n}-{id(self):x}", f"fleet-refresh-{n}-{id(self):x}"
        self.issued.append(access)
        self.refreshes.append(refresh)
        self._live.add(refresh)
        return Grant(
            access,
            self.lifetime,
            refresh,
            self.refresh_lifetime,
            "refresh_token" if refresh_token else "password",
        )

    def secrets(self) -> set[str]:
        """Every token it issued, for the leak scans."""
        return {*self.issued, *self.refreshes}
