"""`sluiceway top` and `sluiceway rollout` given careless options: one line naming the option and
exit 2 (or, for a /metrics URL that does not speak HTTP, `-` columns and a caption), never a
traceback or grpc's raw error."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.cli import main
from server.models.traffic import parse_weights
from server.observability.top_reader import Sample, read_metrics
from tests.support.certs import make_pki
from tests.support.nothing_listening import nothing_listening


@pytest.fixture(autouse=True)
def no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLUICEWAY_TOKEN", raising=False)


@pytest.fixture
def free_target() -> Iterator[str]:
    """An address nothing listens on (bound for the test, never listened to)."""
    with nothing_listening() as address:
        yield address


@pytest.fixture
def not_http() -> Iterator[str]:
    """A URL whose port answers bytes that are not HTTP, as a gRPC port does (HTTP/2 frames)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def answer_once() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64\r\n")

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/metrics"
    thread.join(timeout=10)
    listener.close()


def test_a_metrics_url_that_is_not_http_is_a_caption_not_a_traceback(not_http: str) -> None:
    # urllib raised http.client.BadStatusLine, which read_metrics did not catch: top had crashed.
    sample = Sample(at=0.0)
    read_metrics(not_http, sample, timeout_s=10)
    why = "no HTTP answer there (BadStatusLine): is it the metrics port?"
    assert sample.metrics_error == f"{not_http}: {why}"
    assert not sample.buckets and not sample.queue


@pytest.mark.parametrize("interval", ["inf", "1e30", "nan", "-1", "0"])
def test_top_refuses_an_interval_out_of_range(
    capsys: pytest.CaptureFixture[str], free_target: str, interval: str
) -> None:
    # inf had ended in time.sleep's OverflowError; -1, 0 and nan had been raised to 0.1 s silently.
    assert main(["top", "--once", "--target", free_target, "--interval", interval]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sluiceway top: --interval must be 0.1 to 86400 seconds"), err


def _rollout(*argv: str, target: str) -> int:
    return main(["rollout", *argv, "--target", target])


@pytest.mark.parametrize("kind", ["missing", "directory", "not PEM"])
def test_rollout_names_a_ca_file_it_cannot_use(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, free_target: str, kind: str
) -> None:
    path = {"missing": tmp_path / "absent.pem", "directory": tmp_path, "not PEM": tmp_path / "x.pem"}[kind]
    if kind == "not PEM":
        path.write_text("not a certificate\n")
    assert _rollout("status", "mlp", "--ca-file", str(path), target=free_target) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sluiceway rollout: --ca-file: {path}") or err.startswith(
        f"sluiceway rollout: --ca-file: cannot read {path}"
    ), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_rollout_takes_a_pem_ca_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, free_target: str
) -> None:
    ca = make_pki(tmp_path).ca
    assert _rollout("status", "mlp", "--ca-file", str(ca), target=free_target) == 1  # on to the call
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_rollout_refuses_a_version_past_int64(capsys: pytest.CaptureFixture[str], free_target: str) -> None:
    # SetWeightsRequest(...) had raised "ValueError: Value out of range" (a traceback).
    assert _rollout("set", "mlp", "99999999999999999999:1", target=free_target) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "sluiceway rollout: weights names version 99999999999999999999, out of range (0 to 2**63-1)"
    ), err
    assert parse_weights(f"{2**63 - 1}:1") == {2**63 - 1: 1}
    with pytest.raises(ValueError, match="out of range"):
        parse_weights(f"1:1,{2**63}:0")


@pytest.mark.parametrize("where", ["flag", "variable"])
def test_rollout_refuses_a_token_that_cannot_be_a_header(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, free_target: str, where: str
) -> None:
    # grpc had answered "INTERNAL: Invalid metadata" on the client's side.
    argv = ["status", "mlp"]
    if where == "flag":
        argv += ["--token", "a\nb"]
    else:
        monkeypatch.setenv("SLUICEWAY_TOKEN", "a\nb")
    assert _rollout(*argv, target=free_target) == 2
    named = "--token" if where == "flag" else "SLUICEWAY_TOKEN"
    assert capsys.readouterr().err.startswith(f"sluiceway rollout: {named}: a token must be"), named


def test_top_refuses_a_token_that_cannot_be_a_header(
    capsys: pytest.CaptureFixture[str], free_target: str
) -> None:
    assert main(["top", "--once", "--target", free_target, "--token", "a\nb"]) == 2
    assert capsys.readouterr().err.startswith("sluiceway top: --token: a token must be")
