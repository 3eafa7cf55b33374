"""Stream a 16 kHz WAV through Silero VAD on a sluiceway server and print its speech segments.

One ModelStreamInfer call; each 512-sample chunk (32 ms) is one request of one sequence
(`sequence_id`, `sequence_start` on the first, `sequence_end` on the last), so the server carries
the model's state and context between chunks (examples/vad/prepare.py, config.pbtxt).

Usage: python examples/vad/stream_wav.py FILE.wav [--server 127.0.0.1:8001] [--realtime]
The WAV must be mono 16-bit PCM at 16 kHz (e.g. `ffmpeg -i in.mp3 -ac 1 -ar 16000 out.wav`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's protos/
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

RATE, CHUNK = 16000, 512
CHUNK_S = CHUNK / RATE


def read_wav(path: Path) -> np.ndarray:
    """Samples as float32 in [-1, 1]; ValueError unless mono 16-bit PCM at 16 kHz."""
    with wave.open(str(path), "rb") as wav:
        if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, RATE):
            raise ValueError(
                f"{path}: need mono 16-bit PCM at {RATE} Hz, got {wav.getnchannels()} channel(s), "
                f"{8 * wav.getsampwidth()}-bit, {wav.getframerate()} Hz"
            )
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def chunk_request(model: str, sid: int, index: int, chunk: np.ndarray, last: bool) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=str(index))
    request.inputs.add(name="chunk", datatype="FP32", shape=[1, CHUNK])
    request.raw_input_contents.append(np.ascontiguousarray(chunk, np.float32).tobytes())
    request.parameters["sequence_id"].uint64_param = sid
    request.parameters["sequence_start"].bool_param = index == 0
    request.parameters["sequence_end"].bool_param = last
    return request


async def probabilities(
    address: str, model: str, samples: np.ndarray, sid: int, realtime: bool = False
) -> list[float]:
    """The speech probability of each 512-sample chunk (the last one zero-padded)."""
    count = max(1, -(-len(samples) // CHUNK))
    padded = np.zeros(count * CHUNK, np.float32)
    padded[: len(samples)] = samples

    async def chunks() -> AsyncIterator[pb.ModelInferRequest]:
        for i in range(count):
            yield chunk_request(model, sid, i, padded[i * CHUNK : (i + 1) * CHUNK][None], i == count - 1)
            if realtime:
                await asyncio.sleep(CHUNK_S)  # pace like a microphone

    probs = [0.0] * count
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        async for answer in stub.ModelStreamInfer(
            chunks(), timeout=60 + (count * CHUNK_S if realtime else 0)
        ):
            if answer.error_message:
                raise RuntimeError(answer.error_message)
            response = answer.infer_response
            probs[int(response.id)] = float(np.frombuffer(response.raw_output_contents[0], np.float32)[0])
    return probs


def segments(
    probs: list[float], threshold: float = 0.5, min_silence_s: float = 0.1, min_speech_s: float = 0.25
) -> list[tuple[float, float]]:
    """Speech segments (start s, end s), as Silero's get_speech_timestamps decides them, simplified:
    speech begins at a chunk >= threshold and ends after min_silence_s below threshold - 0.15."""
    found: list[tuple[float, float]] = []
    start: float | None = None
    quiet_since: float | None = None
    for i, p in enumerate(probs):
        t = i * CHUNK_S
        if p >= threshold:
            quiet_since = None
            if start is None:
                start = t
        elif start is not None and p < threshold - 0.15:
            quiet_since = t if quiet_since is None else quiet_since
            if t + CHUNK_S - quiet_since >= min_silence_s:
                if quiet_since - start >= min_speech_s:
                    found.append((start, quiet_since))
                start = quiet_since = None
    if start is not None and len(probs) * CHUNK_S - start >= min_speech_s:
        found.append((start, len(probs) * CHUNK_S))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("wav", type=Path)
    parser.add_argument("--server", default="127.0.0.1:8001")
    parser.add_argument("--model", default="silero_vad")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--realtime", action="store_true", help="send one chunk every 32 ms")
    parser.add_argument("--sequence-id", type=int, default=os.getpid(), help="default: this process's id")
    args = parser.parse_args(argv)
    if not 0 < args.sequence_id < 2**64:  # a uint64 and not 0 (no sequence): it had ended in a traceback
        parser.error(f"--sequence-id must be 1 .. 2**64-1, got {args.sequence_id}")
    try:
        samples = read_wav(args.wav)
    except (OSError, ValueError, wave.Error) as err:
        print(f"stream_wav.py: {err}", file=sys.stderr)
        return 2
    probs = asyncio.run(probabilities(args.server, args.model, samples, args.sequence_id, args.realtime))
    found = segments(probs, args.threshold)
    print(f"{len(probs)} chunks of {CHUNK_S * 1000:.0f} ms, {len(found)} speech segment(s)")
    for start, end in found:
        print(f"speech {start:7.2f} s - {end:7.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
