"""Served resnet_u8 on one GPU in one server, at 16 and 64 in flight: its batches padded to a steady
size as the default does (u8pad, `gpu_batch_padding_shrink_after` 8), as the first default did
(u8flip, 1: a lone request between full batches changed the shape each time), held longer
(u8sticky, 32), not padded (u8flat), and not padded with cuDNN's cheaper heuristic
(u8heur, `cudnn_conv_algo_search: 1`: onnxruntime's default, exhaustive, picks cuDNN's slower
heuristic for every plan it builds again), and padded with `max_queue_delay_microseconds: 2000`
(u8wait: a padded batch costs the same with more rows, and without a delay a lone request, back
first after a batch, runs alone padded to the size before the rest). Each line gives the padded
shape changes during it (the server's sluiceway_padded_shape_changes_total: each a plan build per
convolution). With --py-spy, py-spy's samples of the server's threads during each 16-in-flight
window.

    python scripts/gpu_diag.py OUT [--py-spy PATH] [--allow-cpu] [--limit-s 240]

Where no instance runs on a GPU it says so and stops (exit 1) before measuring: the variants are
alike on the CPU (padding applies on CUDA only); `--allow-cpu` measures anyway, each line labelled
as CPU figures.

Writes OUT/diag_server.log (and OUT/spy_*.txt: py-spy raw, one stack and its sample count a line)
and prints the load lines (and each profile's heaviest leaves), also kept in OUT/gpu_diag.txt.
Found with it on an H200: the instance thread inside the run 94% of the time, batches through IO
binding or session.run alike (server/backends/batch_padding.py says why). Bounded: about 3
minutes, and points that no longer fit --limit-s (240 s) are skipped, said so; binds only
127.0.0.1; its scratch repository is removed at the end.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from google.protobuf import text_format

from loadtest.server_metrics import padded_shape_changes
from protos import model_config_pb2 as mc

REPO = Path(__file__).resolve().parent.parent
VARIANTS: dict[str, dict[str, str]] = {
    "u8pad": {},
    "u8flip": {"gpu_batch_padding_shrink_after": "1"},
    "u8sticky": {"gpu_batch_padding_shrink_after": "32"},
    "u8flat": {"gpu_batch_padding": "false"},
    "u8heur": {"gpu_batch_padding": "false", "cudnn_conv_algo_search": "1"},
    "u8wait": {},  # max_queue_delay_microseconds: see DELAYED
}
DELAYED = {"u8wait": 2000}  # max_queue_delay_microseconds
POINT_S = 20.0  # one level's load (1 s warm-up, 4 s, start-up and py-spy's window) with room to spare
METRICS = re.compile(r"sluiceway metrics on ([\d.]+:\d+/metrics)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_repo(demo: Path, root: Path) -> None:
    for name, params in VARIANTS.items():
        (root / name / "1").mkdir(parents=True)
        os.symlink(demo / "resnet_u8" / "1" / "model.onnx", root / name / "1" / "model.onnx")
        config = text_format.Parse((demo / "resnet_u8" / "config.pbtxt").read_text(), mc.ModelConfig())
        config.name, config.max_batch_size = name, 64
        del config.instance_group[:]
        config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=1, gpus=[0])
        for key, value in params.items():
            config.parameters[key].string_value = value
        if name in DELAYED:
            config.dynamic_batching.max_queue_delay_microseconds = DELAYED[name]
        (root / name / "config.pbtxt").write_text(text_format.MessageToString(config))


def leaves(path: Path, top: int = 8) -> list[str]:
    """The heaviest (thread, innermost three frames) of a py-spy raw profile."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        key = frames[0] + " | " + " < ".join(reversed(frames[-3:]))
        counts[key] += int(n)
        total += int(n)
    return [f"{n:6d} {100 * n / max(total, 1):5.1f}%  {key[:400]}" for key, n in counts.most_common(top)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--py-spy", help="py-spy's path: profile the 16-in-flight windows")
    parser.add_argument(
        "--allow-cpu", action="store_true", help="measure even where no instance runs on a GPU (a rehearsal)"
    )
    parser.add_argument("--limit-s", type=float, default=240.0, help="the whole run's bound (seconds)")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.limit_s
    kept = (out / "gpu_diag.txt").open("w")

    def say(*lines: str) -> None:
        print(*lines, sep="\n  ", flush=True)
        kept.write("\n  ".join(lines) + "\n")
        kept.flush()

    py = sys.executable
    demo = Path(
        subprocess.run(
            [py, "-m", "server", "build-demo"], capture_output=True, text=True, timeout=300, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    ).resolve()
    scratch = Path(tempfile.mkdtemp(prefix="gpu_diag_"))  # this run's own: never another's
    root = scratch / "repo"
    write_repo(demo, root)
    port = free_port()
    log = (out / "diag_server.log").open("w")
    server = subprocess.Popen(
        [py, "-m", "server", "serve", "--model-repository", str(root), "--port", str(port),
         "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )  # fmt: skip
    ready = threading.Event()

    def pump() -> None:
        assert server.stdout is not None
        for line in server.stdout:
            log.write(line)
            log.flush()
            if "ready on" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    began = time.monotonic()
    while not ready.wait(0.5):  # a server that ended is not waited for
        if server.poll() is not None or time.monotonic() - began > min(180, args.limit_s):
            say(f"server not ready (exit {server.poll()}); see {out / 'diag_server.log'}")
            server.kill()
            shutil.rmtree(scratch, ignore_errors=True)
            return 1
    say(f"server ready in {time.monotonic() - began:.1f} s")
    said = (out / "diag_server.log").read_text()
    on_gpu = "(cuda:" in said
    found = METRICS.search(said)
    url = f"http://{found.group(1)}" if found else None
    if not on_gpu:
        say("NOT ON A GPU: every instance runs on the CPU (see the server log); padding applies on CUDA only")
        if not args.allow_cpu:
            server.terminate()
            server.wait(30)
            shutil.rmtree(scratch, ignore_errors=True)
            return 1
        say("--allow-cpu: measuring anyway; these are CPU figures, the variants alike")
    try:
        for model in VARIANTS:
            for level in (16, 64):
                if deadline - time.monotonic() < POINT_S:
                    say(f"== {model} {level} in flight: skipped, past --limit-s {args.limit_s:.0f}")
                    continue
                changes = padded_shape_changes(url, model)
                load = subprocess.Popen(
                    [py, "-m", "loadtest", "--target", f"127.0.0.1:{port}", "--model", model, "--concurrency",
                     str(level), "--duration-s", "4", "--warmup-s", "1", "--rounds", "1", "--processes", "4",
                     "--quiet"],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                )  # fmt: skip
                if args.py_spy and level == 16:
                    time.sleep(1.5)
                    name = f"spy_{model}.txt"
                    spy = [args.py_spy, "record", "-p", str(server.pid), "-d", "3", "-r", "200", "--threads",
                           "--nonblocking", "--format", "raw", "-o", str(out / name)]  # fmt: skip
                    try:
                        done = subprocess.run(spy, capture_output=True, text=True, timeout=30, check=False)
                    except (OSError, subprocess.TimeoutExpired) as err:  # the load is still ended below
                        say(f"== py-spy did not run: {err}")
                        done = subprocess.CompletedProcess(spy, -1)
                    say(f"== {name}: rc {done.returncode}")
                    if (out / name).is_file():
                        say(*leaves(out / name))
                try:
                    text, _ = load.communicate(timeout=60)
                except subprocess.TimeoutExpired:  # a load that does not end is ended, not left behind
                    load.kill()
                    text, _ = load.communicate()
                lines = [line.strip() for line in text.splitlines() if "closed" in line]
                label = "" if on_gpu else " (CPU, not GPU figures)"
                after = padded_shape_changes(url, model)
                changed = (
                    "not padded" if after is None else f"{after - (changes or 0):.0f} padded shape changes"
                )
                say(f"== {model} {level} in flight{label} ({changed}):", *lines)
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
