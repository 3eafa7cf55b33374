"""The health probe's own options, refused before it dials (clients/probe_options.py): one line
naming the flag or variable, exit 1 (Docker reserves a HEALTHCHECK's exit 2), never "NOT SERVING".

Before, a garbage CA or a client key of another certificate was reported as the server's fault
(NOT SERVING (UNAVAILABLE ...)), a client certificate without a CA probed in plaintext without a
word, `--address 127.0.0.1` dialed port 443, and SLUICEWAY_PORT=' 22020' (which the server refuses)
was probed. The address below is never dialed: a probe that dialed it would print NOT SERVING.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clients.health_probe import main
from clients.probe_options import check_address, credentials, default_address
from tests.support.certs import Pki, make_pki

NEVER_DIALED = "127.0.0.1:1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def no_probe_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HEALTH_PROBE_") or name == "SLUICEWAY_PORT":
            monkeypatch.delenv(name)


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one line a usage error prints, after checking it is one (exit 1, nothing on stdout)."""
    assert main([*argv, "--timeout-s", "1"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, (out, err)
    assert err.startswith("python -m clients.health_probe: ") and "NOT SERVING" not in err
    return err.strip()


@pytest.mark.parametrize("port", [" 1", "1 ", "", "abc", "1_0", "70000", "0", "-1"])
def test_a_sluiceway_port_the_server_refuses_or_cannot_tell_is_refused(
    port: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLUICEWAY_PORT", port)
    assert f"SLUICEWAY_PORT {port!r}" in refused(capsys)


@pytest.mark.parametrize(
    ("port", "probed"), [("8001", 8001), ("+8001", 8001), ("8001.0", 8001), ("08001", 8001)]
)
def test_a_sluiceway_port_the_server_takes_is_probed(port: str, probed: int) -> None:
    assert default_address({"SLUICEWAY_PORT": port}) == f"127.0.0.1:{probed}"
    assert default_address({}) == "127.0.0.1:8001"


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("127.0.0.1", "has no port: pass HOST:PORT"),
        ("[::1]", "has no port"),
        ("::1", "an IPv6 address goes in brackets"),
        ("127.0.0.1:", "not HOST:PORT with a port of 1 to 65535"),
        ("127.0.0.1:99999", "not HOST:PORT"),
        ("", "must not be empty"),
    ],
)
def test_an_address_without_a_usable_port_is_refused(
    address: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert says in refused(capsys, "--address", address)


def test_addresses_with_ports_and_grpc_targets_pass() -> None:
    for address in ("127.0.0.1:8001", "localhost:8001", "[::1]:8001", "dns:///sluiceway:8001", "unix:/run/s"):
        assert check_address(address) == address


def test_a_client_certificate_without_the_ca_is_refused_not_plaintext(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HEALTH_PROBE_TLS_CERT", str(pki.client_cert))
    monkeypatch.setenv("HEALTH_PROBE_TLS_KEY", str(pki.client_key))
    line = refused(capsys, "--address", NEVER_DIALED)
    assert "HEALTH_PROBE_TLS_CERT" in line and "set without --tls-ca (HEALTH_PROBE_TLS_CA)" in line
    assert "--tls-server-name (HEALTH_PROBE_TLS_SERVER_NAME) set without" in refused(
        capsys, "--address", NEVER_DIALED, "--tls-server-name", "x"
    )


@pytest.mark.timeout(30)  # a FIFO would block the read for good
def test_a_ca_file_that_cannot_be_one_names_the_flag(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("garbage\n")
    der = tmp_path / "ca.der"
    der.write_bytes(b"\x30\x82\x01\xff" * 8)
    os.mkfifo(tmp_path / "fifo")
    cases = {
        garbage: "holds no PEM CA certificate",
        der: "is not PEM text",
        tmp_path / "fifo": "not a regular file (a FIFO)",
        tmp_path / "missing.pem": "cannot read",
    }
    for path, says in cases.items():
        line = refused(capsys, "--address", NEVER_DIALED, "--tls-ca", str(path))
        assert "--tls-ca (HEALTH_PROBE_TLS_CA)" in line and str(path) in line and says in line, line


def test_a_client_key_of_another_certificate_names_both_flags(
    pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    tls = [
        "--tls-ca",
        str(pki.ca),
        "--tls-cert",
        str(pki.client_cert),
        "--tls-key",
        str(pki.other_client_key),
    ]
    line = refused(capsys, "--address", NEVER_DIALED, *tls)
    assert f"--tls-cert (HEALTH_PROBE_TLS_CERT) {pki.client_cert} and --tls-key" in line
    assert "not a PEM certificate chain and its unencrypted private key" in line


def test_good_tls_files_make_credentials(pki: Pki) -> None:
    assert credentials(None, None, None) is None
    assert credentials(str(pki.ca), None, None) is not None
    assert credentials(str(pki.ca), str(pki.client_cert), str(pki.client_key), "localhost") is not None
