"""Certificates for TLS tests, made at test time by trustme and written where a config (or
nginx, or curl) reads them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
)


@dataclass(frozen=True)
class Pair:
    """A certificate (with its chain after it) and its key, as files."""

    cert: Path
    key: Path


def write_pair(issued: trustme.LeafCert, directory: Path, name: str) -> Pair:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    return Pair(cert, key)


def encrypted_key(key: Path, target: Path, password: str) -> Path:
    """The key in file ``key`` written to ``target``, encrypted under ``password``."""
    loaded = load_pem_private_key(key.read_bytes(), None)
    target.write_bytes(
        loaded.private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(password.encode())
        )
    )
    return target


def write_ca(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path
