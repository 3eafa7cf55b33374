"""Threads and memory of a server across reloads: loads the demo `mlp` with COUNT instances
(RepositoryModelLoad's `config`), reloads it with one, unloads it and loads it again, CYCLES times,
printing the server process's threads and RSS after each step (RELIABILITY.md, "Retired instances").

    .venv/bin/python scripts/instance_lifetime.py [COUNT] [CYCLES]

A retired instance's threads and memory should go, so each cycle ends where the first began.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import tritonclient.grpc as triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the server of this tree
from loadtest.server import SpawnedServer


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
    with SpawnedServer(extra=("--model-control-mode", "explicit", "--load-model", "mlp")) as server:
        assert server.process is not None
        pid = server.process.pid
        client = triton.InferenceServerClient(server.address)
        many = json.dumps({"max_batch_size": 128, "instance_group": [{"count": count, "kind": "KIND_CPU"}]})
        print(f"start: threads, RSS MiB = {usage(pid)}")
        print(f"| cycle | loaded x{count} | reloaded x1 | unloaded | loaded again |")
        print("|---|---|---|---|---|")
        for cycle in range(cycles):
            client.load_model("mlp", config=many)
            loaded = usage(pid)
            client.load_model("mlp", config=json.dumps({"max_batch_size": 128}))
            reloaded = usage(pid)
            client.unload_model("mlp")
            unloaded = usage(pid)
            client.load_model("mlp")
            print(f"| {cycle} | {loaded} | {reloaded} | {unloaded} | {usage(pid)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
