"""A Loop whose trip count a request sends, served by a real server (server/models/value_costed.py).
After twenty requests looping once, the batcher had timed runs of that size as cheap and ran the
next inline on the event loop: one asking for 3e9 iterations held the loop with no end, no
liveness probe was answered and SIGTERM did not stop the server (a tester, session 57). Such a
model's runs now go through the instance's executor: the watchdog fails that request at its
`run_timeout_s` and every other call is answered meanwhile."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from clients import Client, Unavailable
from tests.integration.test_client_mistakes import in_flight
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until

CONFIG = """max_batch_size: 0
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "run_timeout_s" value: { string_value: "1" } }
"""


def _loop_model(path: Path) -> Path:
    """y = x after `m` iterations of a Loop that passes x on."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["go"], ["go_out"]), helper.make_node("Identity", ["v"], ["v_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("go", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [4]),
        ],
        [
            helper.make_tensor_value_info("go_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [4]),
        ],
    )
    nodes = [
        helper.make_node("Squeeze", ["m"], ["count"]),
        helper.make_node("Loop", ["count", "", "x"], ["y"], body=body),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
        helper.make_tensor_value_info("m", TensorProto.INT64, [1]),
    ]
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.timeout(180)
def test_a_loop_count_a_request_sends_never_holds_the_event_loop(tmp_path: Path) -> None:
    write_model(tmp_path / "repo", "looped", _loop_model(tmp_path / "loop.onnx"), CONFIG)
    ones = np.ones(4, np.float32)
    with (
        ServerProcess("--model-repository", str(tmp_path / "repo")) as server,
        Client(server.address) as client,
    ):
        for _ in range(20):  # cheap runs of the one size this model has
            assert (
                client.infer("looped", {"x": ones, "m": np.array([1], np.int64)}, timeout_s=30)["y"].tolist()
                == [1.0] * 4
            )
        caught: list[BaseException] = []

        def endless() -> None:
            try:
                client.infer("looped", {"x": ones, "m": np.array([3_000_000_000], np.int64)}, timeout_s=60)
            except BaseException as err:  # the answer is checked below
                caught.append(err)

        running = threading.Thread(target=endless)
        running.start()
        try:
            wait_until(lambda: in_flight(server, "looped") >= 1, "the endless run to start")
            with Client(server.address) as other:
                assert other.server_live(timeout_s=20)  # answered while the endless run runs
        finally:
            running.join(90)
        assert not running.is_alive()
        assert len(caught) == 1 and isinstance(caught[0], Unavailable), caught
        assert getattr(caught[0], "reason", None) == "RUN_TIMED_OUT", caught
