"""The Lua scripts behind the fleet's token store (redis_tokens.py), and their replies.

Each decision about a credential's token is one script, so it is atomic and one round
trip: lock (adopt a newer token, back off with the fleet, wait for the holder, or fetch),
commit (fenced by the generation the fetch started from, and by the lock's owner), fail,
release, extend a lock, read, and the exact token-request window. Every time comes from
Redis ``TIME``, in whole milliseconds (microseconds for the window), so no two machines'
clocks are ever compared; a script hands back its own ``now`` with times, and the store
maps them onto its clock.

The token hash (``<prefix>tok:{<cred-id>}``) holds :data:`FIELDS`; ``access`` and
``refresh`` are sealed (sealing.py), everything else is a number, a short code or an id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Final

from redis import asyncio as aioredis
from redis.exceptions import NoScriptError

# The token hash's fields, in the order every script returns them.
FIELDS: Final = (
    "gen",  # commits so far (a fetch's fence)
    "id",  # random id of the commit that wrote the token: changes with every commit
    "access",  # sealed
    "obtained",  # ms, server clock: when its request was sent
    "expires",
    "renew",  # refresh_at
    "usable",  # usable_until
    "refresh",  # sealed; absent: none (or spent)
    "refresh_until",  # ms; absent with a refresh token: until the issuer refuses it
    "failures",
    "rejections",
    "outcome",  # "ok" or the last failure's reason
    "wall",  # unix seconds of the last outcome, as its writer saw them (status only)
    "by",  # the lock owner that committed it
)
# A refresh token of unknown lifetime keeps its record this long; a record holding only
# failure counts, at least this long after the last failure.
KEEP_MS: Final = 7 * 24 * 3600 * 1000
FAIL_KEEP_MS: Final = 24 * 3600 * 1000

_PRELUDE: Final = f"""
local FIELDS = {{{", ".join(f"'{name}'" for name in FIELDS)}}}
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function record()
  return redis.call('HMGET', KEYS[1], unpack(FIELDS))
end
local function reply(outcome, now, n)
  local r = {{outcome, now, n}}
  for i, v in ipairs(record()) do r[i + 3] = v end
  return r
end
local function drop_spent(sealed)
  if sealed ~= '' and redis.call('HGET', KEYS[1], 'refresh') == sealed then
    redis.call('HDEL', KEYS[1], 'refresh', 'refresh_until')
  end
end
local function set_refresh(now, sealed, until_in)
  if sealed == '' then
    redis.call('HDEL', KEYS[1], 'refresh', 'refresh_until')
    return 0
  end
  redis.call('HSET', KEYS[1], 'refresh', sealed)
  if until_in == '' then
    redis.call('HDEL', KEYS[1], 'refresh_until')
    return now + {KEEP_MS}
  end
  local untl = now + tonumber(until_in)
  redis.call('HSET', KEYS[1], 'refresh_until', untl)
  return untl
end
"""

# KEYS: token hash, lock, failure. ARGV: owner, lock ttl ms, id of the commit the caller
# holds ('' for none). A newer usable token: 'fresh' (n = backoff ms left, 0 for none);
# else a backoff: 'backoff' (n = ms left); else another owner's lock: 'held' (n = its ms
# left); else the lock is the caller's (taken, or already its own): 'acquired' (n = the
# generation to fence the commit with). The record rides along every answer.
LOCK: Final = """
local now = now_ms()
local f = record()
local backoff = redis.call('PTTL', KEYS[3])
if f[2] and f[2] ~= ARGV[3] and f[3] and (tonumber(f[7]) or 0) > now then
  return reply('fresh', now, math.max(backoff, 0))
end
if backoff > 0 then return reply('backoff', now, backoff) end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then
  return reply('held', now, math.max(redis.call('PTTL', KEYS[2]), 0))
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return reply('acquired', now, tonumber(f[1]) or 0)
"""

# KEYS: token hash, lock, failure. ARGV: owner, fence, new id, sealed access, ms from now
# to obtained, expires, renew, usable; sealed refresh ('' none), ms to refresh_until (''
# unknown), wall, channel, cred-id. 'ok' (n = the new generation), 'stale' (another commit
# came first; n = its generation), or 'lock-taken' (the lock expired and another owner
# took it). The hint published names the credential and generation, nothing secret.
COMMIT: Final = """
local now = now_ms()
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return reply('lock-taken', now, 0) end
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen')) or 0
if gen ~= tonumber(ARGV[2]) then
  if holder then redis.call('DEL', KEYS[2]) end
  return reply('stale', now, gen)
end
gen = gen + 1
local expires = now + tonumber(ARGV[6])
redis.call('HSET', KEYS[1], 'gen', gen, 'id', ARGV[3], 'access', ARGV[4],
  'obtained', now + tonumber(ARGV[5]), 'expires', expires, 'renew', now + tonumber(ARGV[7]),
  'usable', now + tonumber(ARGV[8]), 'failures', 0, 'rejections', 0, 'outcome', 'ok',
  'wall', ARGV[11], 'by', ARGV[1])
local keep = math.max(expires, set_refresh(now, ARGV[9], ARGV[10]))
redis.call('PEXPIRE', KEYS[1], math.max(keep - now, 1000))
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[12], 'tok ' .. ARGV[13] .. ' ' .. gen)
return {'ok', now, gen}
"""

# KEYS: token hash, lock, failure. ARGV: owner, fence, reason, rejected (1/0), backoff ms,
# sealed spent refresh (''), issued (1/0), sealed refresh, ms to refresh_until, wall.
# 'failed' (n = backoff ms), 'stale' or 'lock-taken' as for a commit. A spent refresh
# token is dropped in every case: it was presented, whoever holds the lock now.
FAIL: Final = f"""
local now = now_ms()
drop_spent(ARGV[6])
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return reply('lock-taken', now, 0) end
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen')) or 0
if gen ~= tonumber(ARGV[2]) then
  if holder then redis.call('DEL', KEYS[2]) end
  return reply('stale', now, gen)
end
local failures, rejections = 0, 0
if ARGV[7] == '1' then
  set_refresh(now, ARGV[8], ARGV[9])
else
  failures = tonumber(redis.call('HGET', KEYS[1], 'failures')) or 0
  rejections = tonumber(redis.call('HGET', KEYS[1], 'rejections')) or 0
end
if ARGV[4] == '1' then rejections = rejections + 1 else failures = failures + 1 end
redis.call('HSET', KEYS[1], 'failures', failures, 'rejections', rejections,
  'outcome', ARGV[3], 'wall', ARGV[10])
local delay = tonumber(ARGV[5])
if delay > 0 then
  redis.call('SET', KEYS[3], ARGV[3], 'PX', delay)
else
  redis.call('DEL', KEYS[3])
end
if redis.call('PTTL', KEYS[1]) < {FAIL_KEEP_MS} then
  redis.call('PEXPIRE', KEYS[1], {FAIL_KEEP_MS})
end
redis.call('DEL', KEYS[2])
return reply('failed', now, delay)
"""

# KEYS: token hash, lock. ARGV: owner, sealed spent refresh ('').
RELEASE: Final = """
drop_spent(ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""

# KEYS: lock. ARGV: owner, ttl ms. 1 while the lock is still the owner's.
EXTEND: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: token hash, failure. 'read' (n = backoff ms left, 0 for none).
READ: Final = """
return reply('read', now_ms(), math.max(redis.call('PTTL', KEYS[2]), 0))
"""

# Exact "at most ``limit`` in any ``period``" (design 8.3). KEYS: zset of request times
# (us). ARGV: limit, period us, a member unique to this request. {1, 0}, or {0, us to wait}.
RATE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, period = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(period / 1000) + 1000)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, math.max(math.ceil(tonumber(oldest[2]) + period - now), 1)}
"""


class Script:
    """One script, sent by its SHA-1 and loaded on NOSCRIPT (a flushed or restarted
    Redis), inside the caller's one call: NOSCRIPT is never a failure of the link."""

    __slots__ = ("_sha", "_source")

    def __init__(self, body: str, *, prelude: bool = True) -> None:
        self._source = (_PRELUDE if prelude else "") + body
        self._sha = hashlib.sha1(self._source.encode(), usedforsecurity=False).hexdigest()

    async def run(self, redis: aioredis.Redis, keys: Sequence[str], args: Sequence[object]) -> Any:
        values = [*keys, *(str(arg) for arg in args)]
        try:
            return await redis.evalsha(self._sha, len(keys), *values)
        except NoScriptError:
            return await redis.eval(self._source, len(keys), *values)


SCRIPTS: Final = {
    "lock": Script(LOCK),
    "commit": Script(COMMIT),
    "fail": Script(FAIL),
    "release": Script(RELEASE),
    "extend": Script(EXTEND, prelude=False),
    "read": Script(READ),
    "rate": Script(RATE, prelude=False),
}
