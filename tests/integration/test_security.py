"""TLS, mutual TLS and bearer tokens on real `sluiceway serve` processes over 127.0.0.1.

Two servers share the module: `tls_server` (TLS, tokens, reflection off) and `mtls_server`
(client certificates required, tokens, reflection on). Certificates are made per session with
`cryptography` (tests/support/certs.py). Every refusal is checked next to a call that succeeds,
so a test cannot pass because the server is simply unreachable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clients import NO_RETRY, AsyncClient, Client, SluicewayError, TlsOptions
from clients.health_probe import main as probe_main
from loadtest.cli import main as loadtest_main
from tests.integration.client_fixtures import features
from tests.support.certs import Pki, make_pki, write_tokens
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

INFER_TOKEN = "infer-9f8e7d6c5b4a39281706"
ADMIN_TOKEN = "admin-0a1b2c3d4e5f60718293"
WRONG_TOKEN = "wrong-00000000000000000000"
MLP = {"features": features(2)}
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_args(demo_repo: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """mlp, and `spare` (an mlp copy the admin tests load and unload); TLS and tokens flags."""
    repo = tmp_path_factory.mktemp("secure-repo")
    config = (demo_repo / "mlp" / "config.pbtxt").read_text()
    write_model(repo, "mlp", demo_repo / "mlp" / "1" / "model.onnx", config)
    write_model(repo, "spare", demo_repo / "mlp" / "1" / "model.onnx", config.replace('"mlp"', '"spare"'))
    tokens = write_tokens(tmp_path_factory.mktemp("secrets") / "tokens", INFER_TOKEN, ADMIN_TOKEN)
    return [
        "--model-repository", str(repo),
        "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
        "--auth-tokens-file", str(tokens),
        "--model-control-mode", "explicit", "--load-model", "*",  # the admin tests load and unload
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tls_server(secure_args: list[str]) -> Iterator[ServerProcess]:
    with ServerProcess(*secure_args, "--no-reflection") as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(secure_args: list[str], pki: Pki) -> Iterator[ServerProcess]:
    with ServerProcess(*secure_args, "--tls-client-ca-file", str(pki.ca)) as server:
        yield server


def client(server: ServerProcess, tls: TlsOptions | None, token: str | None = INFER_TOKEN) -> Client:
    # No retries: a refused connection (UNAVAILABLE) is the answer under test, not a blip.
    return Client(server.address, tls=tls, token=token, retry=NO_RETRY, default_timeout_s=10)


def refused_code(server: ServerProcess, tls: TlsOptions | None, token: str | None = INFER_TOKEN) -> Any:
    with client(server, tls, token) as c, pytest.raises(SluicewayError) as caught:
        c.infer("mlp", MLP)
    return caught.value.code


def secure_channel(server: ServerProcess, pki: Pki) -> grpc.Channel:
    return grpc.secure_channel(server.address, grpc.ssl_channel_credentials(pki.ca.read_bytes()))


# -- TLS ------------------------------------------------------------------------------------------


def test_tls_client_trusting_the_ca_is_served(tls_server: ServerProcess, pki: Pki) -> None:
    with client(tls_server, TlsOptions.from_files(ca=pki.ca)) as c:
        assert c.infer("mlp", MLP)["scores"].shape == (2, 2)
    # Checking the certificate against a name it holds, not the address dialled.
    override = TlsOptions.from_files(ca=pki.ca, server_name="localhost")
    with client(tls_server, override) as c:
        assert c.model_ready("mlp")


def test_a_plaintext_client_is_refused(tls_server: ServerProcess, pki: Pki) -> None:
    assert refused_code(tls_server, None) == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(tls_server.address) as channel, pytest.raises(grpc.RpcError) as caught:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_trusting_another_ca_is_refused(tls_server: ServerProcess, pki: Pki) -> None:
    code = refused_code(tls_server, TlsOptions.from_files(ca=pki.other_ca))
    assert code == grpc.StatusCode.UNAVAILABLE
    # The same client with the right CA is served: the refusal was the certificate's.
    with client(tls_server, TlsOptions.from_files(ca=pki.ca)) as c:
        assert c.server_live()


# -- mutual TLS -----------------------------------------------------------------------------------


def test_mtls_serves_a_client_with_a_certificate_from_the_ca(mtls_server: ServerProcess, pki: Pki) -> None:
    tls = TlsOptions.from_files(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    with client(mtls_server, tls) as c:
        assert c.infer("mlp", MLP)["scores"].shape == (2, 2)


@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA"])
def test_mtls_refuses_clients_without_a_certificate_from_the_ca(
    mtls_server: ServerProcess, pki: Pki, who: str
) -> None:
    if who == "no certificate":
        tls = TlsOptions.from_files(ca=pki.ca)
    else:
        tls = TlsOptions.from_files(ca=pki.ca, cert=pki.other_client_cert, key=pki.other_client_key)
    assert refused_code(mtls_server, tls) == grpc.StatusCode.UNAVAILABLE


# -- tokens and scopes ----------------------------------------------------------------------------


@pytest.mark.parametrize(("token", "says"), [(None, "missing credentials"), (WRONG_TOKEN, "invalid")])
def test_no_token_or_a_wrong_one_is_unauthenticated(
    tls_server: ServerProcess, pki: Pki, token: str | None, says: str
) -> None:
    with client(tls_server, TlsOptions.from_files(ca=pki.ca), token) as c:
        with pytest.raises(SluicewayError) as caught:
            c.infer("mlp", MLP)
        assert caught.value.code == UNAUTHENTICATED and says in caught.value.message
        assert WRONG_TOKEN not in caught.value.message
        with pytest.raises(SluicewayError) as caught:
            c.model_metadata("mlp")
        assert caught.value.code == UNAUTHENTICATED
        # The protocol's own health checks stay open.
        assert c.server_live() and c.server_ready()


def test_an_inference_token_cannot_load_and_an_admin_token_can(tls_server: ServerProcess, pki: Pki) -> None:
    tls = TlsOptions.from_files(ca=pki.ca)
    with client(tls_server, tls, INFER_TOKEN) as c, pytest.raises(SluicewayError) as caught:
        c.load_model("spare")
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "RepositoryModelLoad" in caught.value.message and "'admin'" in caught.value.message
    with client(tls_server, tls, ADMIN_TOKEN) as admin, client(tls_server, tls, INFER_TOKEN) as user:
        admin.unload_model("spare")
        assert not user.model_ready("spare")
        with pytest.raises(SluicewayError) as caught:
            user.unload_model("mlp")
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
        admin.load_model("spare")
        assert user.model_ready("spare")
        assert admin.infer("spare", MLP)["scores"].shape == (2, 2)  # admin grants inference too


def test_health_answers_without_a_token(tls_server: ServerProcess, pki: Pki) -> None:
    with secure_channel(tls_server, pki) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "mlp"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_stream_with_a_valid_token_works_and_without_one_is_refused(
    tls_server: ServerProcess, pki: Pki
) -> None:
    tls = TlsOptions.from_files(ca=pki.ca)
    async with AsyncClient(tls_server.address, tls=tls, token=INFER_TOKEN) as good:
        async with good.stream("mlp") as stream:
            for _ in range(3):
                await stream.send(MLP)
            await stream.done_sending()
            results = [result.unwrap()["scores"] async for result in stream]
        assert len(results) == 3 and all(r.shape == (2, 2) and np.isfinite(r).all() for r in results)
    async with AsyncClient(tls_server.address, tls=tls) as anonymous:
        with pytest.raises(SluicewayError) as caught:
            async with anonymous.stream("mlp") as stream:
                for _ in range(3):  # a burst of writes racing with the refusal (see auth.py)
                    await stream.send(MLP)
                await stream.recv()
        assert caught.value.code == UNAUTHENTICATED


# -- reflection -----------------------------------------------------------------------------------


def list_services(channel: grpc.Channel, token: str | None) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    metadata = [("authorization", f"Bearer {token}")] if token else None
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answers = stub.ServerReflectionInfo(iter([request]), timeout=10, metadata=metadata)
    return [s.name for answer in answers for s in answer.list_services_response.service]


def test_reflection_needs_a_token_when_auth_is_on(mtls_server: ServerProcess, pki: Pki) -> None:
    tls = TlsOptions.from_files(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    credentials = tls.credentials()
    with grpc.secure_channel(mtls_server.address, credentials) as channel:
        assert "inference.GRPCInferenceService" in list_services(channel, INFER_TOKEN)
        with pytest.raises(grpc.RpcError) as caught:
            list_services(channel, None)
        assert caught.value.code() == UNAUTHENTICATED


def test_reflection_off_means_no_reflection_service(tls_server: ServerProcess, pki: Pki) -> None:
    with secure_channel(tls_server, pki) as channel, pytest.raises(grpc.RpcError) as caught:
        list_services(channel, INFER_TOKEN)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


# -- the load-test harness ------------------------------------------------------------------------


def test_loadtest_reaches_a_tls_server_with_a_token(
    tls_server: ServerProcess, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text(INFER_TOKEN + "\n")
    common = ["--target", tls_server.address, "--tls-ca", str(pki.ca), "--quiet"]
    short = ["--duration-s", "1", "--warmup-s", "0.3", "--out", str(tmp_path), "--no-plots"]
    # Closed loop and a stream, two workers: the options reach every process and every call.
    args = [*common, "--token-file", str(token), "--concurrency", "2", "--streams", "1", "--fps", "20"]
    assert loadtest_main([*args, "--processes", "2", *short]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["scenario"]["security"] == {"tls": True, "mutual_tls": False, "token": True}
    assert INFER_TOKEN not in json.dumps(results)
    for entry in results["results"]:
        assert entry["errors"] == {} and entry["ok"] > 0, entry["errors"]
        assert entry["server"]["computed_rows"] > 0  # statistics were read over TLS with the token
    capsys.readouterr()
    assert loadtest_main([*common, "--token", WRONG_TOKEN, "--concurrency", "1", *short]) == 1
    err = capsys.readouterr().err
    assert "UNAUTHENTICATED" in err and WRONG_TOKEN not in err


def test_the_health_probe_speaks_tls_when_given_the_ca(tls_server: ServerProcess, pki: Pki) -> None:
    """The images' HEALTHCHECK spoke plaintext only: a healthy TLS server was reported NOT SERVING."""
    assert probe_main(["--address", tls_server.address, "--timeout-s", "5"]) == 1  # refused plaintext
    args = ["--address", tls_server.address, "--timeout-s", "5", "--tls-ca", str(pki.ca)]
    assert probe_main(args) == 0
    assert probe_main([*args, "--tls-server-name", "localhost"]) == 0


def test_the_health_probe_passes_mutual_tls_with_a_client_certificate(
    mtls_server: ServerProcess, pki: Pki
) -> None:
    args = ["--address", mtls_server.address, "--timeout-s", "5", "--tls-ca", str(pki.ca)]
    assert probe_main(args) == 1  # no client certificate
    assert probe_main([*args, "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]) == 0
    assert probe_main([*args, "--tls-cert", str(pki.client_cert)]) == 1  # a certificate without its key


def test_the_rollout_command_passes_mutual_tls_with_a_client_certificate(
    mtls_server: ServerProcess, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sluiceway rollout` had --ca-file alone: a server asking for client certificates closed its
    connections (UNAVAILABLE), where `top`, the harness and the probe pass with --tls-cert/--tls-key."""
    from server.cli import main as server_main

    monkeypatch.setenv("SLUICEWAY_TOKEN", ADMIN_TOKEN)
    args = ["rollout", "status", "mlp", "--target", mtls_server.address, "--ca-file", str(pki.ca)]
    assert server_main(args) == 1  # no client certificate: refused by the server
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert server_main([*args, "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]) == 0
    assert "mlp" in capsys.readouterr().out
    assert server_main([*args, "--tls-cert", str(pki.client_cert)]) == 2  # a certificate without its key
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
    assert server_main([*args, "--tls-cert", str(pki.ca), "--tls-key", str(pki.client_key)]) == 2
    assert "are not a PEM certificate chain and its unencrypted private key" in capsys.readouterr().err
