"""Secrets at rest in the fleet's Redis: the name of a credential's keys, and the seal on
the tokens kept there.

Redis alone must never yield a usable bearer token, nor a way to the credential behind
it. So:

- A credential's keys are named by :func:`cred_id`, a hash of the auth table's identity
  (type, token URL, client id or username, scope, request fields) *and* its secrets: two
  routes on one credential share one token, and a changed credential (a rotated secret
  included) gets new keys. The secrets enter the hash only through scrypt (memory-hard,
  ~70 ms once per store): a plain hash of a user's password would let anyone who can read
  Redis test password guesses at billions a second.
- ``access`` and ``refresh`` are sealed with AES-GCM under a key derived (HKDF-SHA256,
  the cred-id as salt) from ``state.encryption_key`` when one is set, else from that same
  stretched secret, which every replica holds and Redis does not. Each value has its own
  random 96-bit nonce, and the field name and cred-id as associated data, so a sealed
  value moved to another field or credential does not open.

A value that does not open (another key, tampering) is absent to the caller, never an
error: the token is fetched anew.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..config import AuthConfig, PasswordAuth, Secret, TravelyzerAuth

# scrypt at n=2^14, r=8 (16 MiB): the cost of one guess at a credential's secrets.
_SCRYPT_N: Final = 2**14
_SCRYPT_R: Final = 8
_NONCE: Final = 12
_INFO: Final = b"authproxy token seal v1"


def _identity(auth: AuthConfig) -> bytes:
    """What names the credential and the tokens its issuer hands out, without secrets."""
    parts: list[object] = [auth.type, auth.token_url, sorted(auth.params.items())]
    if isinstance(auth, TravelyzerAuth):
        parts.append(auth.expires_in)
    else:
        parts += [auth.client_id, auth.scope]
    if isinstance(auth, PasswordAuth):
        parts.append(auth.username)
    return json.dumps(parts, separators=(",", ":")).encode()


def _stretched(auth: AuthConfig, identity: bytes) -> bytes:
    """32 bytes from the credential's secrets that cost a scrypt to compute; the identity
    is the salt, so a guess tested against one credential is no use against another."""
    secrets = json.dumps([secret.reveal() for secret in auth.secrets]).encode()
    return hashlib.scrypt(
        secrets,
        salt=hashlib.sha256(identity).digest(),
        n=_SCRYPT_N,
        r=_SCRYPT_R,
        p=1,
        maxmem=64 * 1024 * 1024,
        dklen=32,
    )


def _cred_id(identity: bytes, stretched: bytes) -> str:
    return hashlib.sha256(b"authproxy cred v1\0" + identity + b"\0" + stretched).hexdigest()[:32]


def cred_id(auth: AuthConfig) -> str:
    """The name of ``auth``'s keys in Redis: 32 hex characters, the same in every process
    with the same auth table, and new when the credential changes."""
    identity = _identity(auth)
    return _cred_id(identity, _stretched(auth, identity))


class Sealer:
    """Seals and opens one credential's tokens; ``cred_id`` names its keys."""

    __slots__ = ("_aead", "cred_id")

    def __init__(self, key: bytes, cred_id: str) -> None:
        self.cred_id = cred_id
        derived = HKDF(algorithm=SHA256(), length=32, salt=cred_id.encode(), info=_INFO).derive(key)
        self._aead = AESGCM(derived)

    @classmethod
    def for_credential(cls, auth: AuthConfig, encryption_key: Secret | None) -> Sealer:
        """The sealer of ``auth``'s tokens: under ``encryption_key`` when set, else under
        the credential's own secrets."""
        identity = _identity(auth)
        stretched = _stretched(auth, identity)
        key = stretched if encryption_key is None else encryption_key.reveal().encode()
        return cls(key, _cred_id(identity, stretched))

    def seal(self, field: str, value: str) -> str:
        """``value`` sealed for ``field``: base64 text, different on every call."""
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, value.encode(), self._context(field))
        return base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, field: str, text: str) -> str | None:
        """What :meth:`seal` sealed for ``field``; None when it does not open (another
        key, another field or credential, tampered, or not sealed at all)."""
        try:
            raw = base64.b64decode(text.encode("ascii"), validate=True)
            if len(raw) <= _NONCE:
                return None
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], self._context(field))
            return plain.decode()
        except (InvalidTag, binascii.Error, ValueError):
            return None

    def _context(self, field: str) -> bytes:
        return f"{self.cred_id}/{field}".encode()
