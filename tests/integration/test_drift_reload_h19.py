"""A reload starts a new drift reference on /metrics; `sluiceway drift` on the files scores the
same windows, the newest load's (it had mixed the old load's files in as its reference)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.app import build_server
from server.cli import main
from server.settings import ServerSettings
from tests.support.repositories import newer, write_model

SAMPLED = """
max_batch_size: 128
dynamic_batching { }
parameters { key: "sample_ratio" value: { string_value: "1" } }
parameters { key: "sample_what" value: { string_value: "inputs_and_outputs" } }
"""
ROWS, REQUESTS = 50, 8  # 400 rows a window: a load's reference, then its recent window
WINDOW = ROWS * REQUESTS
SHIFTED, SHIFT = 32, 3.0  # after the reload, features 0..31 move by 3 standard deviations


def request(seed: int, shift: float) -> pb.ModelInferRequest:
    data = np.random.default_rng(seed).standard_normal((ROWS, 64)).astype(np.float32)
    data[:, :SHIFTED] += shift
    return pb.ModelInferRequest(
        model_name="mlp",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[ROWS, 64])],
        raw_input_contents=[data.tobytes()],
    )


async def test_after_a_reload_the_drift_command_scores_the_windows_of_the_gauges(
    demo_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, samples = tmp_path / "repo", tmp_path / "samples"
    write_model(repo, "mlp", demo_repo / "mlp" / "1" / "model.onnx", SAMPLED)
    settings = ServerSettings(
        model_repository=repo,
        cache_dir=tmp_path,
        port=0,
        metrics_port=0,
        sample_dir=samples,
        model_control_mode="explicit",
        load_model=("*",),
        drift_reference_samples=WINDOW,
        drift_window_samples=WINDOW,
    )
    server = build_server(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for seed in range(2 * REQUESTS):  # one at a time: rows reach the monitor in this order
                await stub.ModelInfer(request(seed, 0.0), timeout=30)
            sampling = server.models.sampling
            assert await asyncio.to_thread(sampling.flush, 30)
            newer(repo / "mlp" / "1" / "model.onnx")  # a load of unchanged files keeps the version
            await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"), timeout=60)
            for seed in range(2 * REQUESTS, 4 * REQUESTS):
                await stub.ModelInfer(request(seed, SHIFT), timeout=30)
        assert await asyncio.to_thread(sampling.flush, 30)
        gauges = list(sampling.gauge_values())
    finally:
        await server.stop(grace_s=5)

    psi = {
        (labels["kind"], labels["feature"]): value
        for name, labels, value in gauges
        if name == "sluiceway_drift_psi"
    }
    drifted = [labels for name, labels, value in gauges if name == "sluiceway_drift_drifted" and value]
    assert len(psi) == 66  # 64 input features, 2 output columns

    monkeypatch.setenv("COLUMNS", "200")  # rich's table, every column whole
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the table only: the plot takes seconds
    args = ["drift", "mlp", "--sample-dir", str(samples)]
    windows = ["--drift-reference-samples", str(WINDOW), "--drift-window-samples", str(WINDOW)]
    assert main([*args, *windows]) == 0
    out = capsys.readouterr().out
    assert f"{len(drifted)} of 66 series drifted" in out, out
    assert "scoring load " in out and "other loads in this folder" in out
    # Feature 0 of the input: the same PSI as the gauge (4 decimals in the table).
    line = next(line for line in out.splitlines() if re.search(r"\binput\b.*\bfeatures\b\W+0\W", line))
    assert f"{psi[('input', '0')]:.4f}" in line, line
