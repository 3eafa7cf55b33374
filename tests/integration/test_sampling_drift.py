"""Prediction sampling and drift over a real server on 127.0.0.1: a shifted input distribution moves
the drift scores past their threshold, in the server's metrics and in `sluiceway drift`."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.app import build_server
from server.cli import main
from server.observability.drift import PSI_THRESHOLD
from server.settings import ServerSettings
from tests.support.repositories import write_model

SAMPLED = """
max_batch_size: 128
dynamic_batching { }
parameters { key: "sample_ratio" value: { string_value: "1" } }
parameters { key: "sample_what" value: { string_value: "inputs_and_outputs" } }
metric_tags { key: "team" value: "vision" }
"""
ROWS, REQUESTS = 50, 20  # 1000 rows fill the reference, 1000 more the recent window
SHIFTED, SHIFT = 32, 3.0  # features 0..31 move by 3 standard deviations; 32..63 stay put


def request(seed: int, shift: float) -> pb.ModelInferRequest:
    data = np.random.default_rng(seed).standard_normal((ROWS, 64)).astype(np.float32)
    data[:, :SHIFTED] += shift
    return pb.ModelInferRequest(
        model_name="mlp",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[ROWS, 64])],
        raw_input_contents=[data.tobytes()],
    )


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        return str(answer.read().decode())


async def test_a_shifted_input_distribution_moves_drift_past_its_threshold(
    demo_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, samples = tmp_path / "repo", tmp_path / "samples"
    write_model(repo, "mlp", demo_repo / "mlp" / "1" / "model.onnx", SAMPLED)
    settings = ServerSettings(
        model_repository=repo,
        cache_dir=tmp_path,
        port=0,
        metrics_port=0,
        sample_dir=samples,
        drift_reference_samples=ROWS * REQUESTS,
        drift_window_samples=ROWS * REQUESTS,
    )
    server = build_server(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for seed in range(REQUESTS):  # one at a time: rows reach the monitor in this order
                await stub.ModelInfer(request(seed, 0.0), timeout=30)
            sampling = server.models.sampling
            assert await asyncio.to_thread(sampling.flush, 30)
            assert not [g for g in sampling.gauge_values() if g[0].startswith("sluiceway_drift")]
            for seed in range(REQUESTS, 2 * REQUESTS):
                await stub.ModelInfer(request(seed, SHIFT), timeout=30)
        assert await asyncio.to_thread(sampling.flush, 30)
        gauges = list(sampling.gauge_values())
        scraped = await asyncio.to_thread(scrape, server.metrics_port)
    finally:
        await server.stop(grace_s=5)

    counts = {name: value for name, labels, value in gauges if name.startswith("sluiceway_samples")}
    assert counts == {
        "sluiceway_samples_written_total": 40.0,
        "sluiceway_samples_dropped_total": 0.0,
        "sluiceway_samples_lost_total": 0.0,
    }
    psi = {
        (labels["kind"], labels["tensor"], labels["feature"]): value
        for name, labels, value in gauges
        if name == "sluiceway_drift_psi"
    }
    drifted = {
        (labels["kind"], labels["tensor"], labels["feature"])
        for name, labels, value in gauges
        if name == "sluiceway_drift_drifted" and value == 1.0
    }
    inputs = [psi[("input", "features", str(f))] for f in range(64)]
    assert min(inputs[:SHIFTED]) > PSI_THRESHOLD
    assert max(inputs[SHIFTED:]) < PSI_THRESHOLD / 2
    assert {("input", "features", str(f)) for f in range(SHIFTED)} <= drifted
    assert max(psi[("output", "scores", str(f))] for f in range(2)) > PSI_THRESHOLD
    assert drifted & {("output", "scores", "0"), ("output", "scores", "1")}

    # With the config's metric_tags, as the version's other series (they had lacked `_team`).
    tagged = '_team="vision",'
    assert f'nv_inference_count{{{tagged}model="mlp",version="1"}}' in scraped
    assert (
        f'sluiceway_drift_psi{{{tagged}feature="0",kind="input",model="mlp",tensor="features",version="1"}}'
        in scraped
    )
    assert (
        f'sluiceway_drift_drifted{{{tagged}feature="0",kind="output",model="mlp",tensor="scores",version="1"}}'
        in scraped
    )
    assert f'sluiceway_samples_written_total{{{tagged}model="mlp",version="1"}} 40.0' in scraped

    # The files the server wrote (stop() flushed them) give the same table through the CLI.
    plot = tmp_path / "drift.png"
    code = main(
        [
            "drift", "mlp", "--sample-dir", str(samples), "--drift-reference-samples", "1000",
            "--drift-window-samples", "1000", "--out", str(plot),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert plot.stat().st_size > 0
    assert "DRIFT" in out and f"{len(drifted)} of 66 series drifted" in out
    # A plot it cannot write (a read-only folder) is one line after the table, exit 1: it had been
    # matplotlib's traceback.
    unwritable = tmp_path / "no-such-dir-file"
    unwritable.write_text("a file, not a folder")
    args = ["drift", "mlp", "--sample-dir", str(samples), "--drift-reference-samples", "1000"]
    assert main([*args, "--drift-window-samples", "1000", "--out", str(unwritable / "drift.png")]) == 1
    written = capsys.readouterr()
    assert "of 66 series drifted" in written.out
    assert written.err.startswith(f"sluiceway: no plot: cannot write {unwritable / 'drift.png'}: ")
    assert "Traceback" not in written.err


def test_the_drift_command_says_when_there_is_nothing_to_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["drift", "nope", "--sample-dir", str(tmp_path)]) == 2  # no such model: a usage error
    assert "no samples of model 'nope'" in capsys.readouterr().err
