"""Security without a network: the scope table, token checks, tokens files, start-up validation of
the TLS settings, and the client's and load test's TLS/token options."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import grpc
import pytest

import server.app
import server.cli
import server.workers
from clients import Client, TlsOptions
from clients.security import bearer_metadata
from loadtest.channels import security_from, tls_options
from loadtest.cli import build_parser
from loadtest.cli import main as loadtest_main
from protos import grpc_service_pb2 as pb
from server.cli import _parser, main, settings_from_args
from server.security.auth import check, required_scope
from server.security.tokens import Scope, TokenFileError, TokenTable, parse_tokens
from tests.support.certs import Pki, make_pki, write_tokens

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
INFER_TOKEN = "infer-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
TABLE = parse_tokens(f"inference {INFER_TOKEN}\nadmin {ADMIN_TOKEN}\n")
OPEN = {"ServerLive", "ServerReady"}
ADMIN = {"RepositoryModelLoad", "RepositoryModelUnload", "TraceSetting", "LogSettings"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As in test_settings_flags.py: no SLUICEWAY_* leaks in, and `main` never starts a server."""
    for name in list(os.environ):
        if name.startswith("SLUICEWAY_"):
            monkeypatch.delenv(name)

    def must_not_start(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("settings were accepted: the server was about to start")

    monkeypatch.setattr(server.app, "serve", must_not_start)
    monkeypatch.setattr(server.workers, "run_workers", must_not_start)
    monkeypatch.setattr(server.cli, "_demo_repository", must_not_start)
    yield


# -- which RPC needs which scope --------------------------------------------------------------------


def test_every_inference_rpc_has_the_scope_the_readme_says() -> None:
    for method in SERVICE.methods:
        expected = None if method.name in OPEN else Scope.ADMIN if method.name in ADMIN else Scope.INFERENCE
        assert required_scope(f"/{SERVICE.full_name}/{method.name}") == expected, method.name
    assert {m.name for m in SERVICE.methods} >= OPEN | ADMIN | {"ModelInfer", "ModelStreamInfer"}


@pytest.mark.parametrize(
    ("method", "scope"),
    [
        ("/grpc.health.v1.Health/Check", None),
        ("/grpc.health.v1.Health/Watch", None),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", Scope.INFERENCE),
        ("/inference.GRPCInferenceService/SomethingAddedLater", Scope.INFERENCE),
        ("/other.Service/Method", Scope.INFERENCE),
    ],
)
def test_health_is_open_and_anything_unclassified_needs_a_token(method: str, scope: Scope | None) -> None:
    assert required_scope(method) == scope


INFER = f"/{SERVICE.full_name}/ModelInfer"
LOAD = f"/{SERVICE.full_name}/RepositoryModelLoad"


@pytest.mark.parametrize(
    ("method", "metadata", "code"),
    [
        (INFER, (), grpc.StatusCode.UNAUTHENTICATED),
        (INFER, (("authorization", "Basic " + INFER_TOKEN),), grpc.StatusCode.UNAUTHENTICATED),
        (INFER, (("authorization", "Bearer"),), grpc.StatusCode.UNAUTHENTICATED),
        (INFER, (("authorization", "Bearer " + INFER_TOKEN[:-1]),), grpc.StatusCode.UNAUTHENTICATED),
        (INFER, (("authorization", "Bearer " + INFER_TOKEN + "x"),), grpc.StatusCode.UNAUTHENTICATED),
        (INFER, (("authorization", "Bearer " + INFER_TOKEN),), None),
        (INFER, (("authorization", "bearer " + INFER_TOKEN),), None),  # the scheme is case-insensitive
        (INFER, (("x-other", "1"), ("authorization", "Bearer " + ADMIN_TOKEN)), None),
        (LOAD, (("authorization", "Bearer " + INFER_TOKEN),), grpc.StatusCode.PERMISSION_DENIED),
        (LOAD, (("authorization", "Bearer " + ADMIN_TOKEN),), None),
        (LOAD, (), grpc.StatusCode.UNAUTHENTICATED),
        ("/grpc.health.v1.Health/Check", (), None),
        (f"/{SERVICE.full_name}/ServerReady", (("authorization", "Bearer nonsense"),), None),
    ],
)
def test_check_answers(
    method: str, metadata: tuple[tuple[str, str], ...], code: grpc.StatusCode | None
) -> None:
    refused = check(TABLE, method, metadata)
    assert (refused[0] if refused else None) == code
    if refused:
        assert INFER_TOKEN[:8] not in refused[1] and ADMIN_TOKEN[:8] not in refused[1]


def test_permission_denied_names_the_rpc_and_the_missing_scope() -> None:
    refused = check(TABLE, LOAD, (("authorization", "Bearer " + INFER_TOKEN),))
    assert refused is not None
    assert "RepositoryModelLoad" in refused[1] and "'admin'" in refused[1]


# -- tokens files -----------------------------------------------------------------------------------


def test_a_tokens_file_with_comments_and_blank_lines() -> None:
    table = parse_tokens(f"# ours\n\n  inference   {INFER_TOKEN}  \nadmin {ADMIN_TOKEN}\n")
    assert table.scope_of(INFER_TOKEN) is Scope.INFERENCE and table.scope_of(ADMIN_TOKEN) is Scope.ADMIN
    assert table.scope_of("") is None and table.scope_of(INFER_TOKEN.upper()) is None


def test_a_lookup_is_one_probe_whatever_the_number_of_tokens_and_keeps_no_token() -> None:
    """Every configured token had been compared per call: 200,000 tokens cost 24 ms of the event
    loop a call with an unknown token (a tester). A lookup now never walks the table."""
    many = parse_tokens(
        "".join(f"inference token-{n:020d}\n" for n in range(100_000)) + f"admin {ADMIN_TOKEN}\n"
    )

    class NoWalk(dict[bytes, Scope]):
        def __iter__(self) -> NoReturn:
            raise AssertionError("a lookup walked the table")

        def items(self) -> NoReturn:  # type: ignore[override]
            raise AssertionError("a lookup walked the table")

        def values(self) -> NoReturn:  # type: ignore[override]
            raise AssertionError("a lookup walked the table")

    probed = TokenTable(many.key, NoWalk(many.scopes))
    assert (
        probed.scope_of(ADMIN_TOKEN) is Scope.ADMIN and probed.scope_of(f"token-{7:020d}") is Scope.INFERENCE
    )
    assert probed.scope_of("z" * 40) is None
    assert ADMIN_TOKEN.encode() not in b"".join(many.scopes) and ADMIN_TOKEN not in repr(many)


def test_each_table_has_a_key_of_its_own() -> None:
    """Digests under a key of the table's own, never stored: one table's digests say nothing of another's."""
    again = parse_tokens(f"inference {INFER_TOKEN}\nadmin {ADMIN_TOKEN}\n")
    assert again.key != TABLE.key and set(again.scopes).isdisjoint(TABLE.scopes)
    assert again.scope_of(INFER_TOKEN) is TABLE.scope_of(INFER_TOKEN) is Scope.INFERENCE


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (f"root {INFER_TOKEN}\n", "line 1: unknown scope 'root'"),
        (f"inference\nadmin {ADMIN_TOKEN}\n", "line 1: expected '<scope> <token>'"),
        (f"inference {INFER_TOKEN} extra\n", "line 1: expected"),
        ("# c\ninference short\n", "line 2: a token must have 16"),
        (f"inference {INFER_TOKEN}\nadmin {INFER_TOKEN}\n", "line 2: the same token is listed twice"),
        ("# nothing\n\n", "no tokens"),
    ],
)
def test_a_bad_tokens_file_names_the_line_but_not_the_token(text: str, says: str) -> None:
    with pytest.raises(TokenFileError) as caught:
        parse_tokens(text)
    assert says in str(caught.value)
    assert INFER_TOKEN not in str(caught.value) and "short" not in str(caught.value).split(":", 1)[1]


# -- start-up validation ----------------------------------------------------------------------------


def test_tls_and_tokens_settings_from_flags_and_variables(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = write_tokens(tmp_path / "tokens", INFER_TOKEN, ADMIN_TOKEN)
    monkeypatch.setenv("SLUICEWAY_AUTH_TOKENS_FILE", str(tokens))
    monkeypatch.setenv("SLUICEWAY_TLS_CLIENT_CA_FILE", str(pki.ca))
    args = ["serve", "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key)]
    got = settings_from_args(_parser().parse_args([*args, "--no-reflection"]))
    assert (got.tls_cert_file, got.tls_key_file, got.tls_client_ca_file) == (
        pki.server_cert, pki.server_key, pki.ca
    )  # fmt: skip
    assert got.auth_tokens_file == tokens and got.reflection is False
    monkeypatch.delenv("SLUICEWAY_TLS_CLIENT_CA_FILE")
    assert settings_from_args(_parser().parse_args(["serve"])).reflection is True


def _bad_settings(pki: Pki, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    cert, key = ["--tls-cert-file", str(pki.server_cert)], ["--tls-key-file", str(pki.server_key)]
    bad_tokens = tmp_path / "bad-tokens"
    bad_tokens.write_text(f"inference {INFER_TOKEN}\nsuperuser {ADMIN_TOKEN}\n")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    return {
        "cert without key": (cert, "tls_key_file"),
        "key without cert": (key, "tls_key_file"),
        "unreadable cert": (["--tls-cert-file", str(tmp_path / "missing.pem"), *key], "tls_cert_file"),
        "key of another cert": ([*cert, "--tls-key-file", str(pki.client_key)], "tls_key_file"),
        "client CA without TLS": (["--tls-client-ca-file", str(pki.ca)], "tls_client_ca_file"),
        "client CA not PEM": ([*cert, *key, "--tls-client-ca-file", str(not_pem)], "tls_client_ca_file"),
        "unreadable tokens": (["--auth-tokens-file", str(tmp_path / "nope")], "auth_tokens_file"),
        "bad scope line": (["--auth-tokens-file", str(bad_tokens)], "auth_tokens_file"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "cert without key",
        "key without cert",
        "unreadable cert",
        "key of another cert",
        "client CA without TLS",
        "client CA not PEM",
        "unreadable tokens",
        "bad scope line",
    ],
)
def test_bad_security_settings_exit_2_naming_the_field(
    case: str, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags, field = _bad_settings(pki, tmp_path)[case]
    assert main(["serve", *flags]) == 2
    err = capsys.readouterr().err
    assert f"invalid setting '{field}'" in err, err
    assert ADMIN_TOKEN not in err


# -- client and load-test options -------------------------------------------------------------------


def test_client_tls_and_token_options_are_checked_when_built(pki: Pki) -> None:
    with pytest.raises(ValueError, match="private key"):
        TlsOptions(certificate_chain=b"x")
    with pytest.raises(ValueError, match="not both"):
        Client("127.0.0.1:1", token=INFER_TOKEN, metadata=[("Authorization", "Bearer x")])
    with pytest.raises(ValueError, match="not both"):
        Client("127.0.0.1:1", tls=TlsOptions(), credentials=grpc.ssl_channel_credentials())
    with pytest.raises(ValueError, match="visible ASCII"):
        bearer_metadata("two words")
    tls = TlsOptions.from_files(ca=pki.ca, cert=pki.client_cert, key=pki.client_key, server_name="localhost")
    assert tls.root_certificates == pki.ca.read_bytes() and "private_key" not in repr(tls)
    assert tls.channel_args() == [("grpc.ssl_target_name_override", "localhost")]


@pytest.mark.timeout(30)  # a FIFO would block the read for good
def test_client_pem_files_must_be_regular_files_of_at_most_1_mib(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match=r"fifo: not a regular file \(a FIFO\)$"):
        TlsOptions.from_files(ca=tmp_path / "fifo")
    with pytest.raises(ValueError, match=r"^/dev/zero: not a regular file \(a device\)$"):
        TlsOptions.from_files(ca="/dev/zero")


def test_loadtest_security_flags(pki: Pki, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(INFER_TOKEN + "\n")
    args = build_parser().parse_args(
        ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key),
         "--token-file", str(token_file)]
    )  # fmt: skip
    security = security_from(args)
    assert security.token == INFER_TOKEN and INFER_TOKEN not in repr(security)
    tls = tls_options(security)
    assert tls is not None and tls.certificate_chain == pki.client_cert.read_bytes()
    assert tls_options(security_from(build_parser().parse_args([]))) is None
    assert tls_options(security_from(build_parser().parse_args(["--tls"]))) is not None


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-ca", "/nonexistent/ca.pem"], "--tls-ca: cannot read"),
        # Garbage as the CA had failed inside grpc's channel, its own lines, no flag named.
        (["--tls-ca", __file__], "holds no PEM CA certificate"),
        (["--token", "has space"], "--token:"),
    ],
)
def test_loadtest_bad_security_flags_exit_2(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert loadtest_main(["--target", "127.0.0.1:1", *flags, "--quiet"]) == 2
    assert says in capsys.readouterr().err
