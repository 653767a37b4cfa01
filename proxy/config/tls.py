"""TLS contexts from the config: the listener's certificate, and the client certificates a
route or an auth table presents (beside its ca_file).

Each certificate and key is loaded at check time exactly as serve loads it, so that a file
serve could not use (missing, not PEM, encrypted without ``key_password``, a key that is
not the certificate's) is a problem naming its key, reported with every other one, by
``check`` and on SIGHUP as at start-up.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from ..errors import ConfigError
from .checks import Checks, trust_store
from .values import Secret

if TYPE_CHECKING:
    from .model import ListenerTls


_VERIFY: Final = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL}


class CertificateError(ValueError):
    """A certificate and key that cannot be loaded; ``key`` is the config key to blame
    (cert_file, key_file or key_password), the message says why."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def pem_file(checks: Checks, value: Any, path: str, default: str) -> str:
    """A file that exists (a relative path is read from the config's directory); whether it
    holds what its key needs is checked with the keys beside it."""
    found = checks.existing(value, path, lambda p: None if p.is_file() else "file not found")
    return default if found is None else found


def load_chain(
    context: ssl.SSLContext, cert_file: str, key_file: str, password: Secret | None
) -> None:
    """Load ``cert_file`` (certificate, then its chain) and ``key_file`` into ``context``;
    CertificateError names the key at fault. The files are read and compared first, for a
    message better than OpenSSL's, then loaded by OpenSSL."""
    try:
        certs = x509.load_pem_x509_certificates(Path(cert_file).read_bytes())
    except OSError as exc:
        raise CertificateError("cert_file", f"cannot be read ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise CertificateError("cert_file", "not a PEM file of certificates") from exc
    try:
        data = Path(key_file).read_bytes()
    except OSError as exc:
        raise CertificateError("key_file", f"cannot be read ({exc.strerror or exc})") from exc
    secret = None if password is None else password.reveal().encode()
    try:
        key = load_pem_private_key(data, secret)
    except TypeError as exc:  # cryptography's word for "encrypted" / "not encrypted"
        if secret is None:
            raise CertificateError("key_file", "is encrypted: set key_password") from exc
        raise CertificateError("key_password", "is set, but key_file is not encrypted") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        if secret is None:
            raise CertificateError("key_file", "not a PEM private key") from exc
        raise CertificateError(
            "key_password", "does not decrypt key_file (or it is no PEM private key)"
        ) from exc
    public = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*public) != certs[0].public_key().public_bytes(*public):
        raise CertificateError("key_file", "is not the key of the certificate in cert_file")
    try:
        # Always a callable: with none, OpenSSL would prompt on the terminal for a password.
        context.load_cert_chain(cert_file, key_file, password=lambda: secret or b"")
    except (ssl.SSLError, OSError) as exc:
        raise CertificateError("cert_file", f"cannot be loaded ({exc})") from exc


def server_context(tls: ListenerTls) -> ssl.SSLContext:
    """The listener's TLS context: TLS 1.2 or newer, the ssl module's default ciphers, HTTP/1.1
    offered by ALPN; CertificateError when its files cannot be loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    load_chain(context, tls.cert_file, tls.key_file, tls.key_password)
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise CertificateError("ca_file", "not a PEM file of CA certificates") from exc
        context.verify_mode = _VERIFY[tls.client_auth or "required"]
    return context


def client_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None, password: Secret | None
) -> ssl.SSLContext | None:
    """What a route or an auth table connects with: servers verified against ca_file (None:
    the system trust store), the client certificate presented when one is configured; None
    when neither is (the system default). ValueError (CertificateError: with its key) says
    what cannot be loaded."""
    if ca_file is None and cert_file is None:
        return None
    context = ssl.create_default_context() if ca_file is None else trust_store(ca_file)
    if cert_file is not None and key_file is not None:
        load_chain(context, cert_file, key_file, password)
    return context


def whole_listener_tls(checks: Checks, path: str, values: dict[str, Any]) -> None:
    """``server.tls``: its certificate and key load, and belong together; client_auth
    needs the CAs of ca_file, and ca_file alone means "required"."""
    refused = f"{path}.ca_file:" in " ".join(checks.problems)
    if values["client_auth"] is not None and values["ca_file"] is None and not refused:
        checks.fail(
            f"{path}.client_auth", "needs ca_file (the CAs client certificates are checked against)"
        )
    elif values["ca_file"] is not None and values["client_auth"] is None:
        values["client_auth"] = "required"
    if values["cert_file"] is None or values["key_file"] is None:
        return  # missing or refused: reported already
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        load_chain(context, values["cert_file"], values["key_file"], values["key_password"])
    except CertificateError as exc:
        checks.fail(f"{path}.{exc.key}", str(exc))


def client_certificate(checks: Checks, path: str, values: dict[str, Any]) -> None:
    """A route's or auth table's cert_file and key_file: both or neither, loadable, and
    belonging together; key_password only with them."""
    cert, key = values.get("cert_file"), values.get("key_file")
    refused = any(
        problem.startswith((f"{path}.cert_file:", f"{path}.key_file:"))
        for problem in checks.problems
    )
    if refused:
        return
    if (cert is None) != (key is None):
        given, missing = ("cert_file", "key_file") if key is None else ("key_file", "cert_file")
        checks.fail(f"{path}.{missing}", f"is required with {given} (a client certificate)")
        return
    if cert is None:
        if values.get("key_password") is not None:
            checks.fail(f"{path}.key_password", "applies only with cert_file and key_file")
        return
    try:
        client_context(None, cert, key, values.get("key_password"))
    except CertificateError as exc:
        checks.fail(f"{path}.{exc.key}", str(exc))


class ListenerContext:
    """The TLS context a listener keeps for its life, serving each new connection the
    certificate (and client CAs) last loaded: :meth:`update` (on SIGHUP) swaps them in, and
    connections already open keep theirs. The swap happens in the server-name callback,
    which OpenSSL calls on every handshake, SNI or not. Whether a client certificate is
    asked for is the first context's (OpenSSL keeps a connection's verify mode when its
    context is swapped): client_auth changes on restart."""

    __slots__ = ("_current", "config", "context")

    def __init__(self, config: ListenerTls) -> None:
        self.config = config
        self._current = server_context(config)
        self.context = server_context(config)
        self.context.sni_callback = self._pick

    def _pick(self, connection: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        connection.context = self._current

    def update(self, config: ListenerTls) -> None:
        """Serve ``config``'s certificate to new connections; a ConfigError naming the key
        keeps the one served now."""
        try:
            fresh = server_context(config)
        except CertificateError as exc:
            raise ConfigError([f"server.tls.{exc.key}: {exc}"]) from exc
        if config.client_auth != self.config.client_auth:
            # Swapped in, the new CAs would be checked under the old verify mode: none
            # left to check against would fail every handshake.
            was = self.config.client_auth or "not set"
            raise ConfigError([f"server.tls.client_auth: changes only on restart (now {was})"])
        self._current = fresh
        self.config = config


def listener_context(config: ListenerTls | None) -> ListenerContext | None:
    """The listener's TLS (None: plain HTTP); ConfigError when a file that loaded at check
    time no longer does."""
    if config is None:
        return None
    try:
        return ListenerContext(config)
    except CertificateError as exc:
        raise ConfigError([f"server.tls.{exc.key}: {exc}"]) from exc
