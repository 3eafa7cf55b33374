"""Values whose size the caller chooses, against a real server: a long version, model name, upload
path or string sequence id is refused or answered with its own status (never INTERNAL, never a
status message too long for the client to read), and RepositoryModelUnload refuses parameters it
does not serve. With grpc's stubs and tritonclient."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.errors import MESSAGE_MAX_BYTES
from tests.support.server_process import ServerProcess


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess("--model-control-mode", "explicit", "--load-model", "mlp") as running:
        yield running


@pytest.fixture()
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _mlp(**parameters: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
    for key, value in parameters.items():
        request.parameters[key].string_param = value
    return request


def _refused(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)  # type: ignore[operator]
    return caught.value


def test_a_version_of_thousands_of_digits_is_invalid_not_internal(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # int() of more than 4,300 digits raises in Python: this was INTERNAL with a logged traceback.
    version = "9" * 4301
    request = _mlp()
    request.model_version = version
    for call, message in (
        (stub.ModelInfer, request),
        (stub.ModelReady, pb.ModelReadyRequest(name="mlp", version=version)),
        (stub.ModelMetadata, pb.ModelMetadataRequest(name="mlp", version=version)),
    ):
        err = _refused(call, message)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "(4301 characters) is not a version number (at most 19 digits" in err.details()
    request.model_version = "9223372036854775807"  # 19 digits: a number, just not a version here
    assert _refused(stub.ModelInfer, request).code() == grpc.StatusCode.NOT_FOUND


def test_a_huge_name_gets_its_own_status_with_a_message_cut_short(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # A 20 KB name echoed whole made the status exceed the client's metadata limit: the client
    # saw RESOURCE_EXHAUSTED ("received metadata size exceeds hard limit") instead of NOT_FOUND.
    name = "m" * 20_000
    err = _refused(stub.ModelMetadata, pb.ModelMetadataRequest(name=name))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "... (cut: " in err.details() and len(err.details().encode()) < MESSAGE_MAX_BYTES + 40
    request = _mlp()
    request.inputs[0].name = "é" * 20_000  # non-ASCII: percent-encoded on the wire, 2 bytes each
    err = _refused(stub.ModelInfer, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_long_string_sequence_id_is_refused_naming_the_limit(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    err = _refused(stub.ModelInfer, _mlp(sequence_id="s" * 1025))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameter 'sequence_id' is a string of 1025 bytes; at most 1024" in err.details()


@pytest.mark.parametrize("path", ["1/" + "n" * 300, "9" * 300 + "/model.onnx", "9" * 20 + "/model.onnx"])
def test_an_upload_path_part_too_long_for_a_file_name_is_invalid(
    stub: pb_grpc.GRPCInferenceServiceStub, path: str
) -> None:
    # ENAMETOOLONG from the file system was INTERNAL with a logged traceback.
    request = pb.RepositoryModelLoadRequest(model_name="sent")
    request.parameters["config"].string_param = "{}"
    request.parameters[f"file:{path}"].bytes_param = b"x"
    err = _refused(stub.RepositoryModelLoad, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameters['file:" in err.details()


def test_unload_serves_tritonclients_parameter_and_refuses_the_rest(server: ServerProcess) -> None:
    client = triton.InferenceServerClient(server.address)
    client.unload_model("mlp", unload_dependents=True)  # a model with no dependents: itself (it was refused)
    assert not client.is_model_ready("mlp")
    client.load_model("mlp")
    request = pb.RepositoryModelUnloadRequest(model_name="mlp")
    request.parameters["bogus"].bool_param = True
    with grpc.insecure_channel(server.address) as channel:
        err = _refused(pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "'bogus' is not supported" in err.details()
    client.unload_model("mlp")  # tritonclient sends unload_dependents=false every time
    assert not client.is_model_ready("mlp")
    # Statistics of a model with no version loaded: Triton's error, not an empty list.
    with pytest.raises(triton.InferenceServerException, match="requested model 'mlp' is not available"):
        client.get_inference_statistics("mlp")
    client.load_model("mlp")
    assert client.is_model_ready("mlp")


async def test_watch_and_reflection_streams_count_as_streams_and_leave_room_for_calls() -> None:
    # 70 Watch streams on a server allowing 64 concurrent RPCs refused every other call
    # ("Concurrent RPC limit exceeded"): they now count against max_streams (8 here).
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    args = ("--max-concurrent-rpcs", "16", "--max-streams", "8", "--max-streams-per-connection", "100")
    with ServerProcess(*args) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watches = [health.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(12)]
            # Each watch that is admitted says where the server stands at once; the rest are refused.
            outcomes = await asyncio.gather(*(w.read() for w in watches), return_exceptions=True)
            served = [o for o in outcomes if isinstance(o, health_pb2.HealthCheckResponse)]
            refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
            assert len(served) == 8 and {r.status for r in served} == {health_pb2.HealthCheckResponse.SERVING}
            assert len(refused) == 4, outcomes
            for err in refused:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_streams=8" in err.details()
            # Reflection streams count too: with every stream slot taken, one more is refused.
            # Nothing written: the refusal comes as the stream opens, and a grpc.aio client still
            # writing when its call ends reports "INTERNAL: Internal error from Core" instead
            # (grpc/grpc#36066; seen once here). An admitted stream would wait: the bound fails it.
            reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(reflect.read(), timeout=30)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(20):  # more than max_concurrent_rpcs, one at a time: all find room
                assert (await stub.ServerLive(pb.ServerLiveRequest(), timeout=10)).live
            for watch in watches:
                watch.cancel()
        assert server.terminate() == 0  # a drain ends the watches it counted
