"""What one session host (`--shared-sessions`) can run of resnet-sized rows when the model costs
nothing: its own CPU a row and a run, without gRPC, clients or a device in the way.

    .venv/bin/python -m loadtest.host_ceiling [--drivers 2] [--threads 2] [--rows 1,8] [--seconds 4]

Why: under `--shared-sessions` every worker's batches run in one process, the host. On an H200,
0.8 of raw onnxruntime's best resnet batch is some 7,000-8,000 rows/s of 602 KB (BENCHMARKS.md
section 16b); the host must take that in, gather it (into pinned memory on a GPU) and hand each
worker its rows back, on one GIL. Here `--drivers` processes stand for the workers: each opens
the model through the host as a worker's instance does (server/backends/hosted_backend.py) and
`--threads` threads send batches of `--rows` rows back to back for `--seconds`. The model only
slices one number out of each row (FP32 [N, 3, 224, 224] -> [N, 1]), so what the host's CPU
does is the hop: reading the segments, merging the batches, the run's call, the replies. The
host's CPU is read from /proc over the window in which every driver sends (time.monotonic,
which the processes share). Everything stays on this machine: a Unix socket in a private folder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from loadtest import proc

MODEL = "slice"
ROW_SHAPE = (3, 224, 224)  # resnet's FP32 input: 602,112 bytes a row
WARMUP_S = 1.0


def write_model(path: Path) -> None:
    """`image` FP32 [N, 3, 224, 224] -> `first` FP32 [N, 1]: each row's first number."""
    import onnx
    from onnx import TensorProto, helper

    def ints(name: str, values: list[int]) -> onnx.TensorProto:
        return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)

    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["image", "zeros", "ones", "axes"], ["corner"]),
            helper.make_node("Reshape", ["corner", "shape"], ["first"]),
        ],
        MODEL,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", *ROW_SHAPE])],
        [helper.make_tensor_value_info("first", TensorProto.FLOAT, ["N", 1])],
        [ints("zeros", [0, 0, 0]), ints("ones", [1, 1, 1]), ints("axes", [1, 2, 3]), ints("shape", [-1, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)


def _providers(provider: str) -> tuple[tuple[str, dict[str, str]], ...]:
    cpu: tuple[str, dict[str, str]] = ("CPUExecutionProvider", {})
    return (cpu,) if provider == "cpu" else (("CUDAExecutionProvider", {"device_id": "0"}), cpu)


def drive(socket_path: Path, model: Path, threads: int, rows: int, provider: str) -> None:
    """One stand-in worker: opens the model through the host, says `ready`, reads `START END`
    (time.monotonic) from stdin, sends until END, then prints the rows run between START and END
    and the host's counts of the shared session as `counts RUNS ROWS`."""
    from server.backends.hosted_backend import HostedBackend
    from server.backends.hosted_session import OpenRequest
    from server.backends.onnxruntime_backend import OrtOptions

    request = OpenRequest(str(model), OrtOptions(intra_op_threads=1), _providers(provider), MODEL, 0, 64)
    backend = HostedBackend(socket_path, request, ThreadPoolExecutor(1))
    batch = {"image": np.random.default_rng(os.getpid()).standard_normal((rows, *ROW_SHAPE), np.float32)}
    first = backend.run_blocking(batch)["first"]  # the model's answer checked once: each row's corner
    if not np.array_equal(first[:, 0], batch["image"][:, 0, 0, 0]):
        raise SystemExit("the host's run answered other numbers than each row's first")
    print(f"ready on {backend.device}", flush=True)
    start, end = (float(n) for n in sys.stdin.readline().split())
    counted = [0] * threads

    def sender(index: int) -> None:
        while (now := time.monotonic()) < end:
            out = backend.run_blocking(batch)
            if start <= now and time.monotonic() <= end:
                counted[index] += len(out["first"])

    senders = [threading.Thread(target=sender, args=(i,)) for i in range(threads)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    counts = backend.host_counts()
    print(sum(counted), flush=True)
    print(f"counts {counts.runs if counts else 0} {counts.rows if counts else 0}", flush=True)
    backend.close()


def measure(drivers: int, threads: int, rows: int, seconds: float, provider: str = "cpu") -> str:
    """One point: a fresh host, `drivers` processes sending; the host's CPU over the window."""
    from server.backends.host_process import HostProcess

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "slice.onnx"
        write_model(model)
        host = HostProcess(dict(os.environ), "WARNING")
        procs: list[subprocess.Popen[str]] = []
        try:
            command = [sys.executable, "-m", "loadtest.host_ceiling", "--drive", str(host.socket), str(model)]
            args = [*command, str(threads), str(rows), provider]
            for _ in range(drivers):
                procs.append(subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            devices = {_ready_line(p) for p in procs}
            start = time.monotonic() + WARMUP_S
            end = start + seconds
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(f"{start!r} {end!r}\n")
                p.stdin.flush()
            time.sleep(max(start - time.monotonic(), 0.0))  # (a benchmark's window, not a test's wait)
            cpu_before = proc.cpu_s(host.process.pid)
            time.sleep(max(end - time.monotonic(), 0.0))
            cpu = proc.cpu_s(host.process.pid) - cpu_before
            outputs = [p.communicate(timeout=60.0 + seconds)[0].split("\n") for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            host.stop()
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a driver failed: exit {[p.returncode for p in procs]}")
    done = sum(int(out[0]) for out in outputs)
    # The host's counts over its life (warm-up and checks too), as the driver that read them latest
    # saw them: the most runs.
    runs, host_rows = max(tuple(int(n) for n in out[1].split()[1:]) for out in outputs)
    return (
        f"{drivers} drivers x {threads} threads, batches of {rows} ({', '.join(sorted(devices))}): "
        f"{done / seconds:8.1f} rows/s, host CPU {1e3 * cpu / max(done, 1):.3f} ms a row "
        f"({100 * cpu / seconds:.0f}% of a core), host runs of {host_rows / max(runs, 1):.1f} rows"
    )


def _ready_line(driver: subprocess.Popen[str]) -> str:
    """The device a driver's instance runs on, once it has opened it and checked one answer."""
    assert driver.stdout is not None
    line = driver.stdout.readline().strip()
    if not line.startswith("ready on "):
        driver.wait(30.0)
        raise RuntimeError(f"a driver did not open the model (exit {driver.returncode}): {line!r}")
    return line.removeprefix("ready on ")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--drive"]:
        socket_path, model, threads, rows, provider = argv[1:6]
        drive(Path(socket_path), Path(model), int(threads), int(rows), provider)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="1,8", help="rows a batch, one point each")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="the host session's")
    args = parser.parse_args(argv)
    for round_ in range(1, args.rounds + 1):
        for size in (int(n) for n in args.rows.split(",")):
            line = measure(args.drivers, args.threads, size, args.seconds, args.provider)
            print(f"round {round_}: {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
