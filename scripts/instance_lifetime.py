"""Threads and memory of a server across reloads: loads the demo `mlp` with COUNT instances
(RepositoryModelLoad's `config`), reloads it with one, unloads it and loads it again, CYCLES times,
printing the server process's threads and RSS after each step (RELIABILITY.md, "Retired instances").

    .venv/bin/python scripts/instance_lifetime.py [COUNT] [CYCLES] [PORT]

A retired instance's threads and memory should go, so each cycle ends where the first began.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import tritonclient.grpc as triton


def usage(pid: int) -> tuple[int, int]:
    """(threads, RSS in MiB) of process `pid`."""
    status = Path(f"/proc/{pid}/status").read_text()
    threads = re.search(r"Threads:\s+(\d+)", status)
    rss = re.search(r"VmRSS:\s+(\d+)", status)
    assert threads and rss
    return int(threads.group(1)), int(rss.group(1)) // 1024


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv else 30
    cycles = int(argv[1]) if len(argv) > 1 else 4
    port = int(argv[2]) if len(argv) > 2 else 8461
    command = [sys.executable, "-m", "server", "serve", "--port", str(port), "--no-metrics"]
    command += ["--model-control-mode", "explicit", "--load-model", "mlp"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        for line in server.stdout:  # the ready line (the process exits, ending this loop, if it fails)
            if "ready on" in line:
                break
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        many = json.dumps({"max_batch_size": 128, "instance_group": [{"count": count, "kind": "KIND_CPU"}]})
        print(f"start: threads, RSS MiB = {usage(server.pid)}")
        print(f"| cycle | loaded x{count} | reloaded x1 | unloaded | loaded again |")
        print("|---|---|---|---|---|")
        for cycle in range(cycles):
            client.load_model("mlp", config=many)
            loaded = usage(server.pid)
            client.load_model("mlp", config=json.dumps({"max_batch_size": 128}))
            reloaded = usage(server.pid)
            client.unload_model("mlp")
            unloaded = usage(server.pid)
            client.load_model("mlp")
            print(f"| {cycle} | {loaded} | {reloaded} | {unloaded} | {usage(server.pid)} |")
    finally:
        server.terminate()
        server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
