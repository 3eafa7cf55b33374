"""SIGTERM while a client that stopped reading (SIGSTOP, a hung process) is owed large answers:
grpc's own stop waited for them until keepalive dropped the connection, 21.5 s for a 5 s grace
(20 s keepalive timeout by default). The exit is bounded by the grace now, and exits 0."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server_process import REPO_ROOT, ServerProcess, wait_until

ECHO = """
backend: "identity"
max_batch_size: 0
input { name: "INPUT0" data_type: TYPE_UINT8 dims: [-1] }
output { name: "OUTPUT0" data_type: TYPE_UINT8 dims: [-1] }
"""

# 50 MB answers on four connections, as fast as they come: far more than HTTP/2 windows hold.
CLIENT = """
import sys, threading, grpc
from protos import grpc_service_pb2 as pb, grpc_service_pb2_grpc as pb_grpc
options = [("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30),
           ("grpc.use_local_subchannel_pool", 1)]
request = pb.ModelInferRequest(model_name="echo")
request.inputs.add(name="INPUT0", datatype="UINT8", shape=[50_000_000])
request.raw_input_contents.append(bytes(50_000_000))
def loop():
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(sys.argv[1], options=options))
    for _ in range(1000):  # bounded; it is stopped and killed long before
        stub.ModelInfer(request, timeout=60)
        sys.stdout.write("answered\\n")  # one write a line: print's two writes interleave across threads
        sys.stdout.flush()
for _ in range(4):
    threading.Thread(target=loop, daemon=True).start()
threading.Event().wait(120)
"""


@pytest.mark.serial  # a SIGSTOPped client and a drain: alone, as the other drain tests
def test_a_client_that_stopped_reading_does_not_hold_the_exit_past_the_grace(tmp_path: Path) -> None:
    (tmp_path / "echo" / "1").mkdir(parents=True)
    (tmp_path / "echo" / "config.pbtxt").write_text(ECHO)
    server = ServerProcess("--model-repository", str(tmp_path), "--shutdown-grace-s", "2").start()
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, server.address], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert client.stdout is not None
        for _ in range(4):  # answers flowing on every connection
            assert client.stdout.readline().strip() == "answered"
        client.send_signal(signal.SIGSTOP)  # requests in flight, answers it will never read
        wait_until(lambda: client.poll() is None, "the client to be stopped")
        # Bounded by the grace (2 s) and 1 s more for grpc, not by keepalive (20 s).
        # (The log says so when answers were still owed; a client frozen after its answers left
        # the server's buffers owes nothing, and the exit is prompt either way.)
        assert server.terminate(timeout_s=15) == 0
    finally:
        client.kill()
        client.wait(30)
