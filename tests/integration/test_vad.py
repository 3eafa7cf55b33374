"""Silero VAD served with implicit state equals the packaged model run directly, chunk by chunk.

Needs the silero-vad package's ONNX file (`pip install --no-deps silero-vad`); skipped without it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import REPO_ROOT, ServerProcess

if importlib.util.find_spec("silero_vad") is None:
    pytest.skip(
        "the silero-vad package is not installed (pip install --no-deps silero-vad)", allow_module_level=True
    )

sys.path.insert(0, str(REPO_ROOT / "examples" / "vad"))
import prepare
import stream_wav

CHUNK, CONTEXT, RATE = 512, 64, 16000
SEQUENCES, CHUNKS = 8, 24


@pytest.fixture(scope="module")
def vad_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("vad_repo")
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "vad" / "prepare.py"), str(repo)], check=True
    )
    with ServerProcess("--model-repository", str(repo)) as server:
        yield server


def audio(seed: int, chunks: int) -> np.ndarray:
    """Noise with a tone burst in the middle: probabilities that move, different per sequence."""
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal(chunks * CHUNK).astype(np.float32) * 0.02
    t = np.arange(chunks * CHUNK) / RATE
    burst = (t > 0.2) & (t < 0.5)
    samples[burst] += 0.5 * np.sin(2 * np.pi * (180 + 20 * seed) * t[burst]).astype(np.float32)
    return samples


def direct(samples: np.ndarray) -> list[float]:
    """The packaged model, one chunk at a time, as silero-vad's own OnnxWrapper drives it."""
    session = ort.InferenceSession(str(prepare.packaged_model()), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros((1, CONTEXT), np.float32)
    probs = []
    for i in range(len(samples) // CHUNK):
        x = np.concatenate([context, samples[None, i * CHUNK : (i + 1) * CHUNK]], axis=1)
        out, state = session.run(None, {"input": x, "state": state, "sr": np.array(RATE, np.int64)})
        context = x[:, -CONTEXT:]
        probs.append(float(out[0, 0]))
    return probs


def counts(server: ServerProcess) -> tuple[int, int]:
    """(inference_count, execution_count) of silero_vad."""
    with grpc.insecure_channel(server.address) as channel:
        stats = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            pb.ModelStatisticsRequest(name="silero_vad")
        )
    (model,) = stats.model_stats
    return model.inference_count, model.execution_count


async def test_served_probabilities_equal_the_model_run_directly(vad_server: ServerProcess) -> None:
    """Eight sequences at once, on eight streams: their chunks share batches on the server."""
    inputs = [audio(seed, CHUNKS) for seed in range(SEQUENCES)]
    before = counts(vad_server)
    served = await asyncio.gather(
        *(
            stream_wav.probabilities(vad_server.address, "silero_vad", samples, sid=1000 + i)
            for i, samples in enumerate(inputs)
        )
    )
    worst = max(
        float(np.max(np.abs(np.array(got) - np.array(direct(samples)))))
        for got, samples in zip(served, inputs, strict=True)
    )
    assert worst < 1e-5
    assert max(max(p) for p in served) > 0.05 and min(min(p) for p in served) < 0.05  # not constant
    after = counts(vad_server)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    # Some batch held several sequences' chunks (192 requests ran in 26 batches in one run).
    assert inferences == SEQUENCES * CHUNKS and executions < inferences


def test_the_wav_example_prints_speech_segments(vad_server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes((np.clip(audio(1, 40), -1, 1) * 32767).astype("<i2").tobytes())
    run = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "examples" / "vad" / "stream_wav.py"),
            str(path),
            "--server",
            vad_server.address,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.startswith("40 chunks of 32 ms,"), run.stdout
