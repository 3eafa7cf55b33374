"""A key pair Python's ssl loads but grpc refuses (DSA): the settings' check passed, and the server
exited 1 "cannot listen ... Failed to bind to address", the setting never named, as if another
process held the port (a tester). Now exit 2, naming tls_cert_file; a port really in use with the
same files still says "cannot listen" (exit 1)."""

from __future__ import annotations

import datetime
import socket
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa
from cryptography.x509.oid import NameOID

from tests.integration.test_process import run_cli

# DSA is the point here (a key grpc refuses); newer cryptography releases warn that they will drop it.
pytestmark = pytest.mark.filterwarnings("ignore:DSA is deprecated")


def dsa_pair(folder: Path) -> tuple[Path, Path]:
    key = dsa.generate_private_key(key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "dsa.pem", folder / "dsa.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def test_a_key_grpc_refuses_is_named_as_a_setting_not_a_port_in_use(tmp_path: Path) -> None:
    cert, key = dsa_pair(tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    args = (
        "serve",
        "--model-repository",
        str(repo),
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
    )
    run = run_cli(*args, "--port", "0", "--metrics-port", "0")
    assert run.returncode == 2, run.stderr
    assert "invalid setting 'tls_cert_file': grpc refused" in run.stderr and "DSA" in run.stderr, run.stderr
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        run = run_cli(*args, "--port", str(held.getsockname()[1]), "--metrics-port", "0")
    assert run.returncode == 1 and "cannot listen on" in run.stderr, run.stderr
