"""SSL contexts built from certificate files, with errors that name the file.

A node's port presents one certificate to everyone who connects, clients and
peers alike (both speak to the same port). What tells a peer from a client is
what it proves: the cluster token, and with TLS a client certificate issued by
the peer CA. The handshake verifies a presented certificate against every CA
the node trusts (peer CA, and the client CA when clients must show one);
`issuer_check` then says whether it came from the peer CA in particular.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

MIN_VERSION = ssl.TLSVersion.TLSv1_2


class TlsError(ValueError):
    """A certificate, key or CA file cannot be used; the message says which and why."""


def server_context(
    cert_file: str,
    key_file: str,
    *,
    client_cas: Sequence[str] = (),
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """The context of a node's port: its certificate, and the CAs whose client
    certificates it accepts (any presented certificate must verify; with
    `require_client_cert` one must be presented)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSION
    # A client asking to renegotiate again and again would make the node pay a
    # handshake each time (TLS 1.2; 1.3 has no renegotiation).
    context.options |= ssl.OP_NO_RENEGOTIATION
    _load_chain(context, cert_file, key_file)
    for ca in client_cas:
        _load_cas(context, ca)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    elif client_cas:
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_context(
    ca_file: str | None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """A context for calls to a node: the server's certificate must verify
    against `ca_file` (the system's CAs if None) and name the host called; with
    `cert_file` this side shows its own certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    context.minimum_version = MIN_VERSION
    if ca_file is None:
        context.load_default_certs()
    else:
        _load_cas(context, ca_file)
    if cert_file is not None:
        _load_chain(context, cert_file, key_file or cert_file)
    elif key_file is not None:
        raise TlsError(f"a key file ({key_file}) was given without its certificate file")
    return context


def issuer_check(ca_file: str) -> Callable[[bytes | None], bool]:
    """`check(der)`: whether a certificate (as the handshake verified it, DER)
    was issued directly by one of the CAs in `ca_file`."""
    authorities = _read_cas(ca_file)

    def check(der: bytes | None) -> bool:
        if not der:
            return False
        try:
            leaf = x509.load_der_x509_certificate(der)
        except ValueError:
            return False
        for authority in authorities:
            try:
                leaf.verify_directly_issued_by(authority)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
        return False

    return check


# ---------------------------------------------------------------------- files


def _load_chain(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    for path in (cert_file, key_file):
        _readable(path)
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise TlsError(
            f"cannot use the certificate {cert_file} with the key {key_file}: {exc.reason or exc} "
            f"(both PEM; the key must be the certificate's own, unencrypted)"
        ) from None


def _load_cas(context: ssl.SSLContext, ca_file: str) -> None:
    _read_cas(ca_file)
    try:
        context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        raise TlsError(f"cannot use the CA file {ca_file}: {exc.reason or exc}") from None


def _read_cas(ca_file: str) -> list[x509.Certificate]:
    data = _readable(ca_file)
    try:
        authorities = x509.load_pem_x509_certificates(data)
    except ValueError:
        authorities = []
    if not authorities:
        raise TlsError(f"the CA file {ca_file} holds no PEM certificate")
    return authorities


def _readable(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {path}: {exc.strerror or exc}") from None
