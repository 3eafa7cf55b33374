"""What a burst of large requests leaves in /dev/shm under shared sessions, and for how long with no
traffic after it: the workers' segment files (server/backends/segment_pool.py) and the session
host's mappings of them (host_wire.SegmentMaps), read each second.

    .venv/bin/python -m loadtest.segment_trim [--connections 8] [--requests 4] [--rows 16]
        [--watch-s 25] [--workers 2]

The model only averages its 602 KB rows (transport_ceiling.write_model, written to a temporary
repository); the server runs `--workers N --shared-sessions=all` on 127.0.0.1 and every request
has a deadline. Memory, not speed: the figures do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from loadtest import proc
from loadtest.server import SpawnedServer
from loadtest.transport_ceiling import MODEL, write_model
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

SHM = Path("/dev/shm")
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 1 << 30)]


def segment_bytes(pids: Sequence[int]) -> int:
    """Bytes of the segment files these processes made (seg-<worker pid>-...)."""
    total = 0
    for folder in SHM.glob("sluiceway-host-*"):
        for path in folder.glob("seg-*"):
            if any(path.name.startswith(f"seg-{pid}-") for pid in pids):
                with contextlib.suppress(FileNotFoundError):
                    total += path.stat().st_size
    return total


def mapped_segments(pids: Sequence[int]) -> int:
    """Mappings of segment files (removed or not) in these processes: the host's, and the workers'."""
    count = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            count += sum("/seg-" in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())
    return count


def burst(address: str, connections: int, requests: int, rows: int) -> int:
    """`requests` concurrent requests of `rows` rows on each of `connections` connections of their
    own (so both workers): the answers that came back OK."""
    image = np.ones((rows, 3, 224, 224), np.float32).tobytes()
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="image", datatype="FP32", shape=[rows, 3, 224, 224])
    request.raw_input_contents.append(image)
    answered: list[int] = []

    def ask(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
        stub.ModelInfer(request, timeout=60)
        answered.append(1)

    channels = [grpc.insecure_channel(address, options=OWN_CONNECTION) for _ in range(connections)]
    try:
        stubs = [pb_grpc.GRPCInferenceServiceStub(channel) for channel in channels]  # type: ignore[no-untyped-call]
        threads = [threading.Thread(target=ask, args=(s,)) for s in stubs for _ in range(requests)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for channel in channels:
            channel.close()
    return len(answered)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="concurrent requests per connection")
    parser.add_argument("--rows", type=int, default=16, help="rows of 602 KB per request")
    parser.add_argument("--watch-s", type=int, default=25)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        repo = Path(folder) / "repo"
        write_model(repo)
        extra = ["--model-repository", str(repo), "--workers", str(args.workers), "--shared-sessions=all"]
        with SpawnedServer(extra=extra) as server:
            assert server.process is not None
            pids = proc.descendants(server.process.pid)
            ok = burst(server.address, args.connections, args.requests, args.rows)
            print(f"burst: {ok} of {args.connections * args.requests} requests of {args.rows} rows answered")
            print("| s after the burst | segment files, MiB | mappings of segments |\n| ---: | ---: | ---: |")
            start = time.monotonic()
            for second in range(args.watch_s + 1):
                time.sleep(max(0.0, start + second - time.monotonic()))  # a reading a second
                print(f"| {second} | {segment_bytes(pids) >> 20} | {mapped_segments(pids)} |", flush=True)
    print(f"(pid {os.getpid()}; the server stopped)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
