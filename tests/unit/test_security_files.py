"""The security files, checked at start-up: the server certificate's dates (an expired one loaded
silently, and every client that checks it failed the handshake with a message about the client's
side only), the tokens file's mode, and each file's kind and size (a FIFO had hung start-up for
good; /dev/zero as the tokens file grew memory until MemoryError)."""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

import server.app
import server.cli
import server.workers
from protos.regular_files import MAX_PEM_FILE_BYTES
from server.cli import main
from server.security.tls import server_credentials, validity_problem
from server.security.tokens import MAX_TOKENS_FILE_BYTES
from server.settings import ServerSettings
from tests.support.certs import Pki, make_pki, write_dated_pair, write_tokens

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def test_an_expired_certificate_is_named_with_its_end_date(tmp_path: Path) -> None:
    cert, _ = write_dated_pair(tmp_path, "old", NOW - 30 * DAY, NOW - DAY)
    problem = validity_problem(cert, NOW.timestamp())
    assert problem is not None and problem.startswith("expired on ")
    assert str((NOW - DAY).year) in problem


def test_a_certificate_not_yet_valid_is_named(tmp_path: Path) -> None:
    cert, _ = write_dated_pair(tmp_path, "early", NOW + DAY, NOW + 30 * DAY)
    problem = validity_problem(cert, NOW.timestamp())
    assert problem is not None and problem.startswith("is not valid before ")


def test_a_valid_certificate_and_an_unreadable_file_say_nothing(tmp_path: Path) -> None:
    cert, _ = write_dated_pair(tmp_path, "good", NOW - DAY, NOW + DAY)
    assert validity_problem(cert, NOW.timestamp()) is None
    assert validity_problem(tmp_path / "missing.pem", NOW.timestamp()) is None
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert validity_problem(tmp_path / "junk.pem", NOW.timestamp()) is None


def test_the_server_warns_once_when_it_binds_with_an_expired_certificate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = write_dated_pair(tmp_path, "old", NOW - 30 * DAY, NOW - DAY)
    settings = ServerSettings(tls_cert_file=cert, tls_key_file=key)
    with caplog.at_level(logging.WARNING, logger="server.security.tls"):
        assert server_credentials(settings) is not None
    warnings = [r.getMessage() for r in caplog.records if r.name == "server.security.tls"]
    assert len(warnings) == 1
    assert f"tls_cert_file {cert}: the certificate expired on " in warnings[0]
    assert "clients that check it refuse the handshake" in warnings[0]


@pytest.mark.parametrize(("mode", "warned"), [(0o600, False), (0o400, False), (0o640, True), (0o644, True)])
def test_a_tokens_file_others_can_read_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, warned: bool
) -> None:
    """A world-readable tokens file (0644) had started without a word."""
    from server.protocol.calls import QuietRefusals
    from server.security.auth import server_interceptors
    from tests.support.certs import write_tokens

    tokens = write_tokens(tmp_path / "tokens", "i" * 24, "a" * 24)
    tokens.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="server.security.auth"):
        assert len(server_interceptors(ServerSettings(auth_tokens_file=tokens), QuietRefusals(1))) == 1
    said = [r.getMessage() for r in caplog.records if "auth_tokens_file" in r.getMessage()]
    assert said == (
        [f"auth_tokens_file {tokens} can be read or written by other users (mode {mode:04o}): chmod 600 it"]
        if warned
        else []
    )


# -- what kind of file, and how large -----------------------------------------------------------


@pytest.fixture
def no_start(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No SLUICEWAY_* leaks in, and `main` never starts a server (as in test_security_rules.py)."""
    for name in list(os.environ):
        if name.startswith("SLUICEWAY_"):
            monkeypatch.delenv(name)

    def must_not_start(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("settings were accepted: the server was about to start")

    for module, name in (
        (server.app, "serve"),
        (server.workers, "run_workers"),
        (server.cli, "_demo_repository"),
    ):
        monkeypatch.setattr(module, name, must_not_start)
    yield


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _special(tmp_path: Path, kind: str, size: int) -> tuple[Path, str]:
    """A file of `kind` and what the one line refusing it says: a FIFO (nothing ever writes it),
    /dev/zero, or a sparse file one byte over `size` (nothing of it is read)."""
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo")
        return tmp_path / "fifo", "not a regular file (a FIFO)"
    if kind == "zero":
        return Path("/dev/zero"), "not a regular file (a device)"
    with (tmp_path / "large").open("wb") as file:
        file.truncate(size + 1)
    return tmp_path / "large", f"larger than {size} bytes ({size >> 20} MiB), the limit for a"


@pytest.mark.timeout(30)  # the FIFO had blocked the read for good
@pytest.mark.parametrize(
    ("setting", "kind"),
    [
        ("auth_tokens_file", "fifo"),
        ("auth_tokens_file", "zero"),
        ("auth_tokens_file", "large"),
        ("tls_cert_file", "fifo"),
        ("tls_cert_file", "zero"),
        ("tls_cert_file", "large"),
        ("tls_key_file", "fifo"),
        ("tls_key_file", "large"),
        ("tls_client_ca_file", "fifo"),
        ("tls_client_ca_file", "large"),
    ],
)
def test_a_special_or_oversized_file_is_one_line_and_exit_2(
    setting: str, kind: str, pki: Pki, tmp_path: Path, no_start: None, capsys: pytest.CaptureFixture[str]
) -> None:
    bound = MAX_TOKENS_FILE_BYTES if setting == "auth_tokens_file" else MAX_PEM_FILE_BYTES
    path, says = _special(tmp_path, kind, bound)
    files = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
    if setting.startswith("tls"):
        files |= {setting: path}
    else:
        files = {setting: path}
    flags = [part for name, value in files.items() for part in (f"--{name.replace('_', '-')}", str(value))]
    assert main(["serve", *flags]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sluiceway: invalid setting '{setting}': "), lines
    assert f"{path}: {says}" in lines[0], lines[0]


def test_a_tokens_file_at_its_bound_is_read(tmp_path: Path, no_start: None) -> None:
    tokens = write_tokens(tmp_path / "tokens", "i" * 24, "a" * 24)
    with tokens.open("a") as file:
        file.write("#" * (MAX_TOKENS_FILE_BYTES - tokens.stat().st_size))
    assert ServerSettings(auth_tokens_file=tokens).auth_tokens_file == tokens


def test_a_missing_certificate_with_a_client_ca_is_one_line(
    pki: Pki, tmp_path: Path, no_start: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second, wrong line had said mutual TLS needs the tls_cert_file that was given."""
    missing = tmp_path / "missing.pem"
    flags = ["--tls-cert-file", str(missing), "--tls-key-file", str(pki.server_key)]
    assert main(["serve", *flags, "--tls-client-ca-file", str(pki.ca)]) == 2
    said = f"Value error, cannot read {missing}: No such file or directory"
    assert capsys.readouterr().err.splitlines() == [f"sluiceway: invalid setting 'tls_cert_file': {said}"]
