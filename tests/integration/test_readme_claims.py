"""README claims over a real port that no other test checks: per-stream back-pressure, the RPC and
message limits, `--workers` failure handling, failed reloads, draining unloads and the response
cache's deadline, unload and retired-version rules.

Whatever a test waits for is read from the server (answers, statistics, a probe of a queue), never
assumed after a sleep; time limits are generous bounds that only end a test that is failing anyway.
"""

from __future__ import annotations

import os
import select
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.procfs import children_of
from tests.support.repositories import newer, write_model
from tests.support.server_process import ServerProcess, wait_until

# A lone 1-row request waits in the queue for 3 more rows, or for 60 s: held there by the batching
# rules (not by a busy instance), so a test can act while it is queued for certain. Four queued rows
# are a preferred batch and run at once.
HELD = """
max_batch_size: 4
dynamic_batching {{
  preferred_batch_size: [ 4 ]
  max_queue_delay_microseconds: 60000000
  default_queue_policy {{ max_queue_size: {queue} }}
}}
parameters {{ key: "idle_dispatch" value: {{ string_value: "false" }} }}
{extra}
"""
CACHED = "response_cache { enable: true }"


def held_config(queue: int, extra: str = "") -> str:
    return HELD.format(queue=queue, extra=extra)


def infer_request(model: str, rows: int = 1, seed: int = 0, id: str = "") -> pb.ModelInferRequest:
    """`rows` rows of features [rows, 64] for an mlp-shaped model; other seeds, other values."""
    data = np.random.default_rng(seed).standard_normal((rows, 64)).astype(np.float32)
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[rows, 64])],
        raw_input_contents=[data.tobytes()],
        id=id,
    )


def with_timeout(request: pb.ModelInferRequest, microseconds: int) -> pb.ModelInferRequest:
    request.parameters["timeout"].int64_param = microseconds
    return request


def error_of(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=60)  # type: ignore[operator]
    return info.value


def statistics(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> pb.ModelStatistics:
    answer = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30)
    (stats,) = answer.model_stats
    return stats


def queue_is_full(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> bool:
    """Whether `model`'s queue is full, from a probe that never enters it: its 1 us timeout has
    passed by the time it would be queued, so it is refused at max_queue_size or for its deadline.
    Its inputs are never computed, so it never finds or leaves a response-cache entry."""
    err = error_of(stub.ModelInfer, with_timeout(infer_request(model, seed=999), 1))
    if err.code() == grpc.StatusCode.UNAVAILABLE:
        assert "Exceeds maximum queue size" in err.details(), err.details()
        return True
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
    return False


def tile_model(path: Path, width: int) -> Path:
    """x FP32 [N,1] -> y FP32 [N,width]: an answer `width` times its request."""
    repeats = numpy_helper.from_array(np.array([1, width], dtype=np.int64), "repeats")
    graph = helper.make_graph(
        [helper.make_node("Tile", ["x", "repeats"], ["y"])],
        "tile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        [repeats],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def mlp_files(demo_repo: Path) -> tuple[Path, str]:
    """The demo mlp's model file and its config without its `name` line (so it fits any name)."""
    config = (demo_repo / "mlp" / "config.pbtxt").read_text()
    config = "\n".join(line for line in config.splitlines() if not line.startswith("name:"))
    return demo_repo / "mlp" / "1" / "model.onnx", config


# -- stream back-pressure -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream_server(
    mlp_files: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    onnx_file, config = mlp_files
    repo = tmp_path_factory.mktemp("stream-repo")
    write_model(repo, "mlp", onnx_file, config)
    write_model(repo, "held", onnx_file, held_config(queue=8))
    env = {"SLUICEWAY_STREAM_MAX_IN_FLIGHT": "2"}  # as a variable; the RPC limit below is a flag
    with ServerProcess("--model-repository", str(repo), env=env) as server:
        yield server


def test_a_stream_beyond_max_in_flight_is_not_read_until_an_answer(stream_server: ServerProcess) -> None:
    # stream_max_in_flight = 2. Two 1-row requests to `held` wait in its queue for 2 more rows; the
    # third goes to mlp, which answers at once, inline, whenever the server reads it. The server
    # must not read it while the first two are unanswered, so its answer comes after theirs.
    sent_all, finish = threading.Event(), threading.Event()

    def requests() -> Iterator[pb.ModelInferRequest]:
        yield infer_request("held", seed=1, id="1")
        yield infer_request("held", seed=2, id="2")
        yield infer_request("mlp", seed=3, id="3")
        sent_all.set()  # grpc asks for the next request once the previous one is on the wire
        finish.wait(120)

    with grpc.insecure_channel(stream_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = stub.ModelStreamInfer(requests(), timeout=120)
        try:
            assert sent_all.wait(60), "the stream's requests were not sent"
            # Only now release the held pair: a 2-row request completes the preferred batch of 4,
            # so its answer also proves both streamed requests reached the batcher.
            released = stub.ModelInfer(infer_request("held", rows=2, seed=4), timeout=60)
            assert list(released.outputs[0].shape) == [2, 2]
            got = [next(answers) for _ in range(3)]
        finally:
            finish.set()
        assert list(answers) == []  # the stream ends once the client stops sending
        held = statistics(stub, "held")
    for answer in got:
        assert answer.error_message == "", answer.error_message
    ids = [answer.infer_response.id for answer in got]
    assert sorted(ids) == ["1", "2", "3"]
    assert ids[0] != "3", f"the 3rd request was read while 2 were in flight: answers in order {ids}"
    assert held.execution_count == 1 and held.inference_count == 4  # one batch: both held + the release


# -- RPC and message limits -----------------------------------------------------------------------

MAX_RPCS = 3
MAX_MESSAGE = 16 * 1024


@pytest.fixture(scope="module")
def limits_server(
    mlp_files: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    onnx_file, config = mlp_files
    repo = tmp_path_factory.mktemp("limits-repo")
    files = tmp_path_factory.mktemp("limits-files")
    write_model(repo, "mlp", onnx_file, config)
    # Each answer row is 32 KiB: more than the server may send.
    write_model(repo, "tile", tile_model(files / "tile.onnx", width=8192), None)
    with ServerProcess(
        "--model-repository", str(repo),
        "--max-message-bytes", str(MAX_MESSAGE),
        "--max-concurrent-rpcs", str(MAX_RPCS),
    ) as server:  # fmt: skip
        yield server


def test_rpcs_beyond_max_concurrent_rpcs_are_refused_then_served_again(limits_server: ServerProcess) -> None:
    finish = threading.Event()
    with grpc.insecure_channel(limits_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def one_request_then_wait() -> Iterator[pb.ModelInferRequest]:
            yield infer_request("mlp")
            finish.wait(120)

        def no_message() -> Iterator[bytes]:  # a call that holds its slot until `finish`
            finish.wait(120)
            yield from ()

        # Streams may take half the slots at most (max_streams below max_concurrent_rpcs): calls
        # still waiting for their request message take the rest.
        streams = [stub.ModelStreamInfer(one_request_then_wait(), timeout=120) for _ in range(MAX_RPCS // 2)]
        silent = channel.stream_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=bytes,
            response_deserializer=bytes,
        )
        waiting = []
        try:
            for stream in streams:  # an answer proves the server holds that call open
                assert next(stream).error_message == ""
            waiting = [silent.future(no_message(), timeout=120) for _ in range(MAX_RPCS - len(streams))]

            def full() -> bool:
                for i, call in enumerate(waiting):
                    if call.done():  # refused: a probe below held the slot as it came; another
                        waiting[i] = silent.future(no_message(), timeout=120)
                refused = not _live(stub)
                # A call refused as it came while the last probe's slot was still held is seen done
                # only after this probe (its refusal is sent first): not full then, its slot is free
                # (a fresh-clone run's ModelInfer below was served so, once).
                return refused and not any(call.done() for call in waiting)

            for _ in range(5):
                wait_until(full, "the silent calls to take the last slots")
                try:
                    stub.ModelInfer(infer_request("mlp"), timeout=60)
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
                    break
                # Served: its slot was free after all, a silent call's refused as it came and seen
                # done only now (a fresh-clone run, session 64). Then one of them ends; else the
                # server served past its limit.
                ended = threading.Event()
                for call in waiting:
                    call.add_done_callback(lambda _, seen=ended: seen.set())
                assert ended.wait(30), "served with every slot held"
            else:
                raise AssertionError("five calls at the limit all served")
        finally:
            finish.set()
        for stream in streams:
            assert list(stream) == []
        for call in waiting:  # answered once they half-close without a message
            assert call.exception(timeout=30).code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[union-attr]
        # The calls have ended: RPCs are served again (the count drops as each call is finished).
        wait_until(lambda: _live(stub), "RPCs to be served again after the streams ended")
        assert list(stub.ModelInfer(infer_request("mlp"), timeout=30).outputs[0].shape) == [1, 2]


def _live(stub: pb_grpc.GRPCInferenceServiceStub) -> bool:
    try:
        return bool(stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
        return False


def test_messages_beyond_max_message_bytes_are_refused_and_the_server_keeps_serving(
    limits_server: ServerProcess,
) -> None:
    with grpc.insecure_channel(limits_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        # A request larger than the limit (128 rows of 64 floats: 32 KiB) is refused by gRPC.
        err = error_of(stub.ModelInfer, infer_request("mlp", rows=128))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
        # An answer larger than the limit is not sent either.
        tile = pb.ModelInferRequest(
            model_name="tile",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 1])],
            raw_input_contents=[np.ones((1, 1), np.float32).tobytes()],
        )
        err = error_of(stub.ModelInfer, tile)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
        # Within the limit (32 rows: 8 KiB) it serves as before, on the same connection.
        answer = stub.ModelInfer(infer_request("mlp", rows=32), timeout=30)
        assert list(answer.outputs[0].shape) == [32, 2]


# -- --workers --------------------------------------------------------------------------------------


def test_a_worker_that_dies_stops_the_others_and_the_parent_exits_1(demo_repo: Path) -> None:
    # With this grace the parent would wait 130 s before killing a worker it had not stopped: an
    # exit well within 60 s shows it stopped the other worker (SIGTERM) rather than outwaited it.
    env = {"SLUICEWAY_SHUTDOWN_GRACE_S": "120"}
    server = ServerProcess("--model-repository", str(demo_repo), "--workers", "2", env=env).start()
    pidfds: list[int] = []
    try:
        assert server.process is not None
        workers = children_of(server.process.pid)
        assert len(workers) == 2, workers  # ready is printed once every worker is
        # A pidfd becomes readable when its process exits: an event to wait on, for any process.
        pidfds = [os.pidfd_open(pid) for pid in workers]
        os.kill(workers[0], signal.SIGKILL)
        assert server.process.wait(60) == 1
        readable, _, _ = select.select([pidfds[1]], [], [], 60)
        assert readable, "the other worker still runs after the parent exited"
        server.wait_for_output("a worker exited; stopping the others")
    finally:
        server.kill()
        for fd in pidfds:  # a worker left running when this test fails is not left behind
            if not select.select([fd], [], [], 0)[0]:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            os.close(fd)


# -- repository: failed reloads, draining unloads, the response cache's rules -----------------------


@pytest.fixture(scope="module")
def repo_dir(mlp_files: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model per test, since tests break configs and unload models: `reloaded` (the mlp),
    `drained` (held), `cached` (the mlp with the cache), `cached_held` (held, with the cache)."""
    onnx_file, config = mlp_files
    repo = tmp_path_factory.mktemp("repository-repo")
    write_model(repo, "reloaded", onnx_file, config)
    write_model(repo, "drained", onnx_file, held_config(queue=1))
    write_model(repo, "cached", onnx_file, config + "\n" + CACHED + "\n")
    write_model(repo, "cached_held", onnx_file, held_config(queue=1, extra=CACHED))
    return repo


@pytest.fixture(scope="module")
def repo_server(repo_dir: Path) -> Iterator[ServerProcess]:
    args = (
        "--model-repository",
        str(repo_dir),
        "--response-cache-bytes",
        "1000000",
        "--model-control-mode",
        "explicit",
        "--load-model",
        "*",
    )
    with ServerProcess(*args) as server:
        yield server


@pytest.fixture()
def repo_stub(repo_server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(repo_server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _state(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> tuple[str, str]:
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
    (entry,) = [m for m in index.models if m.name == model]
    return entry.state, entry.reason


@pytest.mark.parametrize(
    "broken",
    [
        "max_batch_size: 8\nthis is { not protobuf text",  # refused when the config is read
        'max_batch_size: 8\ninput [ { name: "nope" data_type: TYPE_FP32 dims: [ 64 ] } ]',  # at load
    ],
    ids=["unparsable", "fails-to-load"],
)
def test_a_failed_reload_answers_an_error_and_the_old_version_keeps_serving(
    repo_dir: Path, repo_stub: pb_grpc.GRPCInferenceServiceStub, broken: str
) -> None:
    config = repo_dir / "reloaded" / "config.pbtxt"
    good = config.read_text()
    expected = repo_stub.ModelInfer(infer_request("reloaded", seed=5), timeout=30).raw_output_contents[0]
    served = statistics(repo_stub, "reloaded").inference_count
    config.write_text(broken)
    try:
        err = error_of(repo_stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="reloaded"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
        assert "reloaded" in err.details()
    finally:
        config.write_text(good)
    state, reason = _state(repo_stub, "reloaded")  # serving, and the index says why nothing changed
    assert state == "READY" and reason.startswith("reload failed, version(s) 1 still serving: "), reason
    assert repo_stub.ModelReady(pb.ModelReadyRequest(name="reloaded"), timeout=30).ready
    answer = repo_stub.ModelInfer(infer_request("reloaded", seed=5), timeout=30)
    assert answer.raw_output_contents[0] == expected
    # The same version object: its statistics go on (a new one's would start at 0).
    assert statistics(repo_stub, "reloaded").inference_count == served + 1


def test_unload_answers_a_request_queued_before_it(repo_stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert not queue_is_full(repo_stub, "drained")
    queued = repo_stub.ModelInfer.future(infer_request("drained", seed=6), timeout=120)
    wait_until(lambda: queued.done() or queue_is_full(repo_stub, "drained"), "the request to be queued")
    assert not queued.done(), f"answered before the unload: {queued.exception()!r}"
    repo_stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="drained"), timeout=60)
    # Computed, not failed: the unload runs what is queued without waiting for a fuller batch.
    assert list(queued.result(timeout=60).outputs[0].shape) == [1, 2]
    assert _state(repo_stub, "drained") == ("UNAVAILABLE", "unloaded")
    err = error_of(repo_stub.ModelInfer, infer_request("drained", seed=6))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())


def test_a_cache_hit_is_answered_when_the_deadline_would_refuse_a_computation(
    repo_stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    computed = repo_stub.ModelInfer(infer_request("cached", seed=7), timeout=30)
    before = statistics(repo_stub, "cached")
    # 1 us has passed before the batcher could take either request: the new inputs are refused...
    err = error_of(repo_stub.ModelInfer, with_timeout(infer_request("cached", seed=8), 1))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
    # ... while the inputs already cached are answered from the cache.
    hit = repo_stub.ModelInfer(with_timeout(infer_request("cached", seed=7), 1), timeout=30)
    assert hit.raw_output_contents[0] == computed.raw_output_contents[0]
    after = statistics(repo_stub, "cached")
    assert after.inference_stats.cache_hit.count == before.inference_stats.cache_hit.count + 1
    assert after.execution_count == before.execution_count


def test_an_answer_computed_on_a_retired_version_is_not_cached(
    repo_stub: pb_grpc.GRPCInferenceServiceStub, repo_dir: Path
) -> None:
    # A request queued on `cached_held` when it is reloaded runs on the old version as that
    # version is retired (reloading drops the model's entries first). Had its answer been stored,
    # the new version (the same version number, so the same cache key) would answer it from the
    # cache even with a deadline that has passed; not stored, such a request is refused.
    request = infer_request("cached_held", seed=9)
    queued = repo_stub.ModelInfer.future(request, timeout=120)
    wait_until(lambda: queued.done() or queue_is_full(repo_stub, "cached_held"), "the request to be queued")
    assert not queued.done(), f"answered before the reload: {queued.exception()!r}"
    newer(repo_dir / "cached_held" / "1" / "model.onnx")  # a load of unchanged files keeps the version
    repo_stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="cached_held"), timeout=60)
    assert list(queued.result(timeout=60).outputs[0].shape) == [1, 2]  # computed on the old version
    err = error_of(repo_stub.ModelInfer, with_timeout(request, 1))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
    assert statistics(repo_stub, "cached_held").inference_stats.cache_hit.count == 0


async def test_unloading_a_model_drops_its_cache_entries(repo_dir: Path, tmp_path: Path) -> None:
    # In this process: the cache's contents are not visible over the protocol, and a later load
    # drops the model's entries too, so only the cache itself shows what the unload did.
    from server.models.manager import ModelManager
    from server.models.response_cache import ResponseCache
    from server.protocol.request_path import RequestPath
    from server.settings import ServerSettings

    settings = ServerSettings(model_repository=repo_dir, cache_dir=tmp_path)
    cache = ResponseCache(1_000_000)
    manager = ModelManager(repo_dir, settings, lambda name, ready: None, response_cache=cache)
    await manager.load_all()
    try:
        path = RequestPath(manager, lambda: False)
        await path.infer(infer_request("cached", seed=10), 30.0)
        await path.infer(infer_request("cached", seed=11), 30.0)
        assert cache.stats().entries == 2
        await manager.unload("cached")
        assert cache.stats().entries == 0
    finally:
        await manager.stop(drain_timeout_s=5)
