"""A certificate authority of our own, for clusters whose certificates nobody
else needs to trust: `Cluster(tls=True)` and `kvcluster certs`.

Keys are ECDSA P-256 (a handshake costs a fraction of an RSA-2048 one). Every
certificate it issues serves both ends of a connection (serverAuth and
clientAuth), as a node's does: the same certificate answers on its port and
proves it is a peer when it calls another node. Its subject alternative names
are the host names and IP addresses it is reached at.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .contexts import TlsError

DEFAULT_DAYS = 365
MAX_DAYS = 3650
_BACKDATE = datetime.timedelta(minutes=5)  # clocks of hosts a little apart still agree


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, name: str = "kvcluster CA", days: int = DEFAULT_DAYS) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=_days(days)))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @classmethod
    def load(
        cls, cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str]
    ) -> CertificateAuthority:
        try:
            certificate = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
            key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise TlsError(f"cannot load the CA from {cert_file} and {key_file}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TlsError(f"{key_file} is not an EC key made by `kvcluster certs ca`")
        return cls(certificate, key)

    def issue(
        self, name: str, hosts: Sequence[str], days: int = DEFAULT_DAYS
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A certificate for `name`, valid for the host names and IP addresses in `hosts`."""
        if not hosts:
            raise TlsError("a certificate needs at least one host name or IP address")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        ca_key_id = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=_days(days)))
            .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return certificate, key

    def write(self, cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str]) -> None:
        write_key_pair(self.certificate, self.key, cert_file, key_file)

    def certificate_file(self, cert_file: str | os.PathLike[str]) -> None:
        """Only the certificate: what clients and peers need to trust it."""
        Path(cert_file).write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))


def write_key_pair(
    certificate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
) -> None:
    """PEM files; the key readable by its owner only (created so, never widened)."""
    Path(cert_file).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(h.strip().strip("[]") for h in hosts):
        if not host:
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if len(host) > 253 or not all(c.isalnum() or c in "-." for c in host):
                raise TlsError(f"{host!r} is neither an IP address nor a host name") from None
            names.append(x509.DNSName(host))
    if not names:
        raise TlsError("a certificate needs at least one host name or IP address")
    return names


def _days(days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise TlsError(f"days must be from 1 to {MAX_DAYS}, got {days!r}")
    return days
