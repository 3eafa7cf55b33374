"""Test PKI made with `cryptography`: a CA, a server certificate for 127.0.0.1/localhost, a client
certificate, and a second, unrelated CA with a client certificate of its own.

Imports nothing from protos/ (tritonclient tests use it too; see server_process.py). EC P-256 keys:
generating them takes milliseconds, so every session makes fresh ones.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed server and client
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # unrelated CA
    other_client_cert: Path  # signed by other_ca
    other_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


Dates = tuple[datetime.datetime, datetime.datetime]


def _builder(
    subject: str, issuer: x509.Name, key: Key, dates: Dates | None = None
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = dates or (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def _ca(common_name: str) -> tuple[x509.Certificate, Key]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(common_name, _name(common_name), key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common_name: str, ca: tuple[x509.Certificate, Key], *, server: bool
) -> tuple[x509.Certificate, Key]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(common_name, ca[0].subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca[1], hashes.SHA256()), key


def _write(folder: Path, stem: str, pair: tuple[x509.Certificate, Key]) -> tuple[Path, Path]:
    cert, key = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert.write_bytes(pair[0].public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        pair[1].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key.chmod(0o600)
    return cert, key


def make_pki(folder: Path) -> Pki:
    """Write every certificate and key into `folder` (PEM) and name them."""
    ca = _ca("sluiceway test CA")
    other = _ca("unrelated test CA")
    ca_cert, _ = _write(folder, "ca", ca)
    other_cert, _ = _write(folder, "other-ca", other)
    server_cert, server_key = _write(folder, "server", _leaf("localhost", ca, server=True))
    client_cert, client_key = _write(folder, "client", _leaf("test client", ca, server=False))
    stranger_cert, stranger_key = _write(folder, "other-client", _leaf("stranger", other, server=False))
    return Pki(
        ca_cert, server_cert, server_key, client_cert, client_key, other_cert, stranger_cert, stranger_key
    )


def write_dated_pair(
    folder: Path, stem: str, not_before: datetime.datetime, not_after: datetime.datetime
) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 valid only from `not_before` to `not_after`, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _builder("localhost", _name("localhost"), key, (not_before, not_after)).sign(key, hashes.SHA256())
    return _write(folder, stem, (cert, key))


def write_tokens(path: Path, inference: str, admin: str) -> Path:
    path.write_text(f"# scope token\ninference {inference}\nadmin {admin}\n")
    path.chmod(0o600)
    return path
