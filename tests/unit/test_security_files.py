"""The security files, checked at start-up: the server certificate's dates (an expired one loaded
silently, and every client that checks it failed the handshake with a message about the client's
side only) and the tokens file's mode."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import pytest

from server.security.tls import server_credentials, validity_problem
from server.settings import ServerSettings
from tests.support.certs import write_dated_pair

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
