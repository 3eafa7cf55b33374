"""System shared memory over a real server: what is refused (and how), and what is safe.

Objects are plain files under /dev/shm (what shm_open creates), removed after each test.
"""

from __future__ import annotations

import os
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import wire
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until
from tests.support.shm_stub import unregistering_stub

SHM = Path("/dev/shm")
MAX_REGIONS = 6
MAX_BYTES = 1 << 20

# One row waits in the queue until four are queued (or 60 s): a request held there for certain.
HELD = """
max_batch_size: 4
dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 60000000 }
parameters { key: "idle_dispatch" value: { string_value: "false" } }
"""


def identity_model(path: Path) -> Path:
    """text [N] BYTES -> text_out (on the wire [N, 1], a scalar a row), wide [N,3] INT64 -> wide_out:
    to read both from odd offsets."""
    inputs = [
        helper.make_tensor_value_info("text", TensorProto.STRING, ["N"]),
        helper.make_tensor_value_info("wide", TensorProto.INT64, ["N", 3]),
    ]
    outputs = [
        helper.make_tensor_value_info("text_out", TensorProto.STRING, ["N"]),
        helper.make_tensor_value_info("wide_out", TensorProto.INT64, ["N", 3]),
    ]
    nodes = [
        helper.make_node("Identity", ["text"], ["text_out"]),
        helper.make_node("Identity", ["wide"], ["wide_out"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "ident", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.save(model, path)
    return path


# Its tensors declared: max_batch_size 0 alone is "not set", and completion would batch it.
FLAT = """
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


def flat_identity(path: Path) -> Path:
    """x [L] FP32 -> y, no batch dimension (max_batch_size 0): tensors as large as a test wants."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["L"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("shm-repo")
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    write_model(repo, "mlp", mlp, (demo_repo / "mlp" / "config.pbtxt").read_text())
    write_model(repo, "held", mlp, HELD)
    write_model(repo, "ident", identity_model(tmp_path_factory.mktemp("m") / "ident.onnx"), None)
    write_model(repo, "flat", flat_identity(tmp_path_factory.mktemp("m") / "flat.onnx"), FLAT)
    flags = ["--allow-client-shm", "--max-shm-regions", str(MAX_REGIONS), "--max-shm-bytes", str(MAX_BYTES)]
    with ServerProcess("--model-repository", str(repo), *flags) as process:
        yield process


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with unregistering_stub(server.address) as stub:
        yield stub


@pytest.fixture
def objects() -> Iterator[list[Path]]:
    made: list[Path] = []
    yield made
    for path in made:
        path.unlink(missing_ok=True)


def new_object(objects: list[Path], size: int, data: bytes = b"") -> str:
    """A POSIX shm object of `size` bytes starting with `data`; its key."""
    key = f"sluiceway_it_{uuid.uuid4().hex[:12]}"
    path = SHM / key
    path.write_bytes(data.ljust(size, b"\0"))
    objects.append(path)
    return "/" + key


def register(stub: pb_grpc.GRPCInferenceServiceStub, name: str, key: str, size: int, offset: int = 0) -> None:
    stub.SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(name=name, key=key, offset=offset, byte_size=size), timeout=30
    )


def error(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)  # type: ignore[operator]
    return info.value


def shm_params(region: str, size: int, offset: int = 0) -> dict[str, pb.InferParameter]:
    return {
        "shared_memory_region": pb.InferParameter(string_param=region),
        "shared_memory_byte_size": pb.InferParameter(int64_param=size),
        "shared_memory_offset": pb.InferParameter(int64_param=offset),
    }


def mlp_in_shm(
    model: str, region: str, rows: int, out_region: str = "", out_size: int = 0
) -> pb.ModelInferRequest:
    features = pb.ModelInferRequest.InferInputTensor(
        name="features", datatype="FP32", shape=[rows, 64], parameters=shm_params(region, rows * 64 * 4)
    )
    outputs = []
    if out_region:
        outputs = [
            pb.ModelInferRequest.InferRequestedOutputTensor(
                name="scores", parameters=shm_params(out_region, out_size)
            )
        ]
    return pb.ModelInferRequest(model_name=model, inputs=[features], outputs=outputs)


def mlp_reference(demo_repo: Path, data: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(demo_repo / "mlp" / "1" / "model.onnx"))
    return np.asarray(session.run(["scores"], {"features": data})[0])


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("a/b", "one path component"),
        ("../etc/passwd", "one path component"),
        ("/..", "one path component"),
        ("/", "one path component"),
        ("/sluiceway_it_missing", "no such object"),
    ],
)
def test_bad_keys_are_refused(stub: pb_grpc.GRPCInferenceServiceStub, key: str, says: str) -> None:
    err = error(
        stub.SystemSharedMemoryRegister, pb.SystemSharedMemoryRegisterRequest(name="r", key=key, byte_size=8)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and says in (err.details() or ""), err.details()


def test_symlinks_directories_and_ranges_are_refused(
    stub: pb_grpc.GRPCInferenceServiceStub, objects: list[Path], tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 64)
    link = SHM / f"sluiceway_it_{uuid.uuid4().hex[:12]}"
    link.symlink_to(secret)
    objects.append(link)
    refused = error(
        stub.SystemSharedMemoryRegister,
        pb.SystemSharedMemoryRegisterRequest(name="l", key=link.name, byte_size=8),
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a regular file" in (
        refused.details() or ""
    )
    key = new_object(objects, 64)
    beyond = error(
        stub.SystemSharedMemoryRegister,
        pb.SystemSharedMemoryRegisterRequest(name="b", key=key, offset=60, byte_size=8),
    )
    assert beyond.code() == grpc.StatusCode.INVALID_ARGUMENT and "beyond the end" in (beyond.details() or "")
    empty = error(stub.SystemSharedMemoryRegister, pb.SystemSharedMemoryRegisterRequest(name="e", key=key))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    register(stub, "ok", key, 64)
    dup = error(
        stub.SystemSharedMemoryRegister, pb.SystemSharedMemoryRegisterRequest(name="ok", key=key, byte_size=8)
    )
    assert dup.code() == grpc.StatusCode.ALREADY_EXISTS


def test_limits_name_the_setting(stub: pb_grpc.GRPCInferenceServiceStub, objects: list[Path]) -> None:
    big = new_object(objects, MAX_BYTES + 4096)
    too_big = error(
        stub.SystemSharedMemoryRegister,
        pb.SystemSharedMemoryRegisterRequest(name="big", key=big, byte_size=MAX_BYTES + 1),
    )
    assert too_big.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_shm_bytes" in (
        too_big.details() or ""
    )
    key = new_object(objects, 64)
    for i in range(MAX_REGIONS):
        register(stub, f"r{i}", key, 64)
    many = error(
        stub.SystemSharedMemoryRegister,
        pb.SystemSharedMemoryRegisterRequest(name="one-more", key=key, byte_size=64),
    )
    assert many.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_shm_regions" in (many.details() or "")


def test_request_ranges_and_sizes_are_checked(
    stub: pb_grpc.GRPCInferenceServiceStub, objects: list[Path]
) -> None:
    key = new_object(objects, 4096)
    register(stub, "in", key, 1024)
    register(stub, "small", key, 8, offset=2048)
    cases = [
        (mlp_in_shm("mlp", "nope", 1), grpc.StatusCode.NOT_FOUND,
         "Unable to find shared memory region: 'nope'"),
        (mlp_in_shm("mlp", "in", 5), grpc.StatusCode.INVALID_ARGUMENT, "is beyond region 'in' (1024 bytes)"),
        (mlp_in_shm("mlp", "in", 2, "small", 8), grpc.StatusCode.INVALID_ARGUMENT,
         "output 'scores' (8 bytes) should be at least 16 bytes"),
    ]  # fmt: skip
    for request, code, says in cases:
        err = error(stub.ModelInfer, request)
        assert err.code() == code and says in (err.details() or ""), err.details()
    wrong_size = mlp_in_shm("mlp", "in", 1)
    wrong_size.inputs[0].parameters["shared_memory_byte_size"].int64_param = 252
    err = error(stub.ModelInfer, wrong_size)
    assert "shared_memory_byte_size is 252, expected 256" in (err.details() or ""), err.details()
    lone = mlp_in_shm("mlp", "in", 1)
    del lone.inputs[0].parameters["shared_memory_region"]
    err = error(stub.ModelInfer, lone)
    assert "can not be specified without 'shared_memory_region'" in (err.details() or ""), err.details()


def test_bytes_and_unaligned_inputs_and_outputs(
    stub: pb_grpc.GRPCInferenceServiceStub, objects: list[Path]
) -> None:
    text = [b"alpha", b"", b"\xce\xbb"]
    packed = wire.pack_bytes(np.array(text, dtype=object))
    wide = np.arange(9, dtype=np.int64).reshape(3, 3) - 4
    data = packed + b"\x01" + wide.tobytes()  # the INT64 input starts at an odd address
    key = new_object(objects, 1024, data)
    register(stub, "io", key, 1024)
    t_in = pb.ModelInferRequest.InferInputTensor(
        name="text", datatype="BYTES", shape=[3, 1], parameters=shm_params("io", len(packed))
    )
    w_in = pb.ModelInferRequest.InferInputTensor(
        name="wide", datatype="INT64", shape=[3, 3], parameters=shm_params("io", wide.nbytes, len(packed) + 1)
    )
    out = [
        pb.ModelInferRequest.InferRequestedOutputTensor(
            name="text_out", parameters=shm_params("io", 100, 512)
        ),
        pb.ModelInferRequest.InferRequestedOutputTensor(name="wide_out"),
    ]
    response = stub.ModelInfer(
        pb.ModelInferRequest(model_name="ident", inputs=[t_in, w_in], outputs=out), timeout=30
    )
    assert [o.name for o in response.outputs] == ["text_out", "wide_out"]
    assert response.outputs[0].datatype == "BYTES" and list(response.outputs[0].shape) == [3, 1]
    assert response.raw_output_contents[0] == b""
    np.testing.assert_array_equal(
        np.frombuffer(response.raw_output_contents[1], np.int64).reshape(3, 3), wide
    )
    written = (SHM / key.lstrip("/")).read_bytes()[512 : 512 + len(packed)]
    assert written == packed


def _maps(server: ServerProcess) -> str:
    assert server.process is not None
    return Path(f"/proc/{server.process.pid}/maps").read_text()


def _queued(server: ServerProcess, model: str) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    return any(
        line.startswith("sluiceway_queue_requests") and f'model="{model}"' in line and line.endswith(" 1.0")
        for line in text.splitlines()
    )


def test_unregister_while_in_use_is_safe(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, objects: list[Path], demo_repo: Path
) -> None:
    data = np.random.default_rng(7).standard_normal((1, 64)).astype(np.float32)
    key = new_object(objects, 4096, data.tobytes())
    register(stub, "held_io", key, 4096)
    held = stub.ModelInfer.future(mlp_in_shm("held", "held_io", 1, "held_io", 8), timeout=120)
    wait_until(lambda: _queued(server, "held"), "the shared-memory request to be queued")
    stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="held_io"), timeout=30)
    status = stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(), timeout=30)
    assert "held_io" not in status.regions
    assert key.lstrip("/") in _maps(server)  # still mapped: the queued request holds it
    late = error(stub.ModelInfer, mlp_in_shm("mlp", "held_io", 1))
    assert late.code() == grpc.StatusCode.NOT_FOUND
    filler = np.zeros((3, 64), np.float32)
    rest = pb.ModelInferRequest(
        model_name="held",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[3, 64])],
        raw_input_contents=[filler.tobytes()],
    )
    stub.ModelInfer(rest, timeout=60)  # four rows: the held request runs with it
    response = held.result(timeout=60)
    assert response.raw_output_contents == [b""]
    got = np.frombuffer((SHM / key.lstrip("/")).read_bytes()[:8], np.float32).reshape(1, 2)
    np.testing.assert_allclose(got, mlp_reference(demo_repo, data), rtol=1e-5, atol=1e-5)
    wait_until(lambda: key.lstrip("/") not in _maps(server), "the unregistered region to be unmapped")


def test_a_client_that_truncates_its_object_while_its_request_waits_does_not_crash_the_server(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, objects: list[Path], demo_repo: Path
) -> None:
    """The input stayed a view of the mapping until its batch ran: a client that truncated the
    object meanwhile made that read a SIGBUS, and the server died with every request in it. Inputs
    are copied before a request waits, so it is computed on what was there when it was queued."""
    data = np.random.default_rng(9).standard_normal((1, 64)).astype(np.float32)
    key = new_object(objects, 4096, data.tobytes())
    register(stub, "shrinks", key, 4096)
    held = stub.ModelInfer.future(mlp_in_shm("held", "shrinks", 1), timeout=120)
    wait_until(lambda: _queued(server, "held"), "the shared-memory request to be queued")
    os.truncate(SHM / key.lstrip("/"), 0)
    rest = pb.ModelInferRequest(
        model_name="held",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[3, 64])],
        raw_input_contents=[np.zeros((3, 64), np.float32).tobytes()],
    )
    stub.ModelInfer(rest, timeout=60)  # four rows: the held request runs with it
    response = held.result(timeout=60)
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(1, 2)
    np.testing.assert_allclose(got, mlp_reference(demo_repo, data), rtol=1e-5, atol=1e-5)
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="shrinks"), timeout=30)


def _shrink_and_regrow(paths: list[Path], size: int, stop: threading.Event) -> None:
    """A client's object truncated to nothing and extended back, over and over, until `stop`."""
    while not stop.is_set():
        for path in paths:
            os.truncate(path, 0)
            os.truncate(path, size)


def test_objects_shrinking_under_every_request_never_kill_the_server(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, objects: list[Path]
) -> None:
    """Between the server's size check and its touch of the mapping, a client could truncate its
    object: the touch was a SIGBUS, and the process died (a tester's loop killed it within three
    requests, on the input and on the output path). Data now moves by pread and pwrite: each request
    is answered, OK or INVALID_ARGUMENT naming its region, and the server lives."""
    size = 393_216  # 96 Ki floats: a copy long enough for the race to land
    paths = [SHM / new_object(objects, size).lstrip("/") for _ in range(2)]
    register(stub, "shrinking_in", "/" + paths[0].name, size)
    register(stub, "shrinking_out", "/" + paths[1].name, size)
    request = pb.ModelInferRequest(model_name="flat")
    request.inputs.add(
        name="x", datatype="FP32", shape=[size // 4], parameters=shm_params("shrinking_in", size)
    )
    request.outputs.add(name="y", parameters=shm_params("shrinking_out", size))
    stop = threading.Event()
    toggler = threading.Thread(target=_shrink_and_regrow, args=(paths, size, stop), daemon=True)
    toggler.start()
    answers: dict[str, int] = {}
    try:
        for _ in range(150):
            try:
                stub.ModelInfer(request, timeout=30)
                answers["OK"] = answers.get("OK", 0) + 1
            except grpc.RpcError as refused:
                assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.details()
                assert "shared memory region 'shrinking_" in str(refused.details()), refused.details()
                answers["refused"] = answers.get("refused", 0) + 1
    finally:
        stop.set()
        toggler.join(30)
    assert sum(answers.values()) == 150
    assert server.process is not None and server.process.poll() is None
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live


def test_a_stream_request_uses_shared_memory_too(
    stub: pb_grpc.GRPCInferenceServiceStub, objects: list[Path], demo_repo: Path
) -> None:
    data = np.random.default_rng(9).standard_normal((2, 64)).astype(np.float32)
    key = new_object(objects, 4096, data.tobytes())
    register(stub, "streamed", key, 4096)
    request = mlp_in_shm("mlp", "streamed", 2, "streamed", 16)
    request.outputs[0].parameters["shared_memory_offset"].int64_param = 1024
    (answer,) = list(stub.ModelStreamInfer(iter([request]), timeout=60))
    assert answer.error_message == "" and answer.infer_response.raw_output_contents == [b""]
    got = np.frombuffer((SHM / key.lstrip("/")).read_bytes()[1024:1040], np.float32).reshape(2, 2)
    np.testing.assert_allclose(got, mlp_reference(demo_repo, data), rtol=1e-5, atol=1e-5)
