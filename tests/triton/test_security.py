"""tritonclient.grpc over mutual TLS with bearer tokens in `headers`, as Triton users call it."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support.certs import Pki, make_pki, write_tokens
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

INFER_TOKEN = "triton-infer-5a4b3c2d1e0f"
ADMIN_TOKEN = "triton-admin-0f1e2d3c4b5a"
INFER_HEADERS = {"authorization": f"Bearer {INFER_TOKEN}"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls_server(
    demo_repo: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("secure-repo")
    write_model(
        repo, "mlp", demo_repo / "mlp" / "1" / "model.onnx", (demo_repo / "mlp" / "config.pbtxt").read_text()
    )
    tokens = write_tokens(tmp_path_factory.mktemp("secrets") / "tokens", INFER_TOKEN, ADMIN_TOKEN)
    with ServerProcess(
        "--model-repository", str(repo),
        "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
        "--tls-client-ca-file", str(pki.ca), "--auth-tokens-file", str(tokens),
        "--model-control-mode", "explicit", "--load-model", "*",
    ) as server:  # fmt: skip
        yield server


def mlp_input(rows: int = 2) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("features", [rows, 64], "FP32")
    tensor.set_data_from_numpy(np.random.default_rng(rows).standard_normal((rows, 64)).astype(np.float32))
    return tensor


def test_tritonclient_with_ssl_client_certificate_and_bearer_headers(
    mtls_server: ServerProcess, pki: Pki
) -> None:
    client = grpcclient.InferenceServerClient(
        url=mtls_server.address,
        ssl=True,
        root_certificates=str(pki.ca),
        private_key=str(pki.client_key),
        certificate_chain=str(pki.client_cert),
    )
    assert client.is_server_live() and client.is_server_ready()  # open, as health checks
    result = client.infer("mlp", [mlp_input()], headers=INFER_HEADERS, client_timeout=10)
    assert result.as_numpy("scores").shape == (2, 2)

    with pytest.raises(InferenceServerException) as info:
        client.infer("mlp", [mlp_input()], client_timeout=10)
    assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as info:
        client.load_model("mlp", headers=INFER_HEADERS)
    assert info.value.status() == "StatusCode.PERMISSION_DENIED"
    client.load_model("mlp", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert client.is_model_ready("mlp", headers=INFER_HEADERS)

    # A stream with the token in its headers.
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(lambda result, error: answers.put((result, error)), headers=INFER_HEADERS)
    try:
        client.async_stream_infer("mlp", [mlp_input(3)], request_id="s1")
        result, error = answers.get(timeout=30)
        assert error is None, error
        assert result.as_numpy("scores").shape == (3, 2)  # type: ignore[attr-defined]
    finally:
        client.stop_stream()
        client.close()


def test_tritonclient_without_a_client_certificate_is_refused(mtls_server: ServerProcess, pki: Pki) -> None:
    client = grpcclient.InferenceServerClient(
        url=mtls_server.address, ssl=True, root_certificates=str(pki.ca)
    )
    with pytest.raises(InferenceServerException) as info:
        client.is_server_live(client_timeout=10)
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    client.close()
