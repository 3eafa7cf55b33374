"""Every frame a stream sends fits max_message_bytes, error frames too: an error frame over it
(a request with a long id, just under the limit, whose answer is refused) made gRPC end the whole
stream ("Sent message larger than max (65591 vs. 65536)"), and the requests after it went
unanswered. Its message is now cut to fit (its start kept, the cut said), its id kept, the
stream goes on, and each request has exactly one answer."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.protocol.answer_checks import CUT_NOTE, fit_error_frame
from tests.support.models import filler_model
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("error-frames")
    write_model(repo, "filler", filler_model(repo / "filler.onnx"), None)
    with ServerProcess("--model-repository", str(repo), "--max-message-bytes", str(LIMIT)) as process:
        yield process


def filler(columns: int, rid: str, final: bool = False) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name="filler",
        id=rid,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="SHAPE", datatype="INT64", shape=[2])],
        raw_input_contents=[np.array([1, columns], np.int64).tobytes()],
    )
    if final:
        request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request


def counts(stub: pb_grpc.GRPCInferenceServiceStub) -> tuple[int, int]:
    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="filler"), timeout=30).model_stats
    return stats.inference_stats.success.count, stats.inference_stats.fail.count


@pytest.mark.parametrize("final", [False, True], ids=["plain", "final-flag"])
def test_an_error_frame_over_the_limit_is_cut_to_fit_and_the_stream_goes_on(
    server: ServerProcess, final: bool
) -> None:
    long_id = "e" * 65_400
    refused = filler(20_000, long_id, final)  # an answer of 80 KB: refused RESOURCE_EXHAUSTED
    assert refused.ByteSize() < LIMIT  # the request fits
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = counts(stub)
        frames = list(stub.ModelStreamInfer(iter([refused, filler(10, "after", final)]), timeout=60))
        success, fail = counts(stub)
    # No preserve_ordering: the two are computed apart and may be answered in either order.
    by_id = {f.infer_response.id: f for f in frames}
    assert len(frames) == 2 and set(by_id) == {long_id, "after"}  # had ended the stream
    error, after = by_id[long_id], by_id["after"]
    assert error.ByteSize() <= LIMIT, error.ByteSize()
    assert error.error_message.startswith("RESOURCE_EXHAUSTED: answer message larger"), error.error_message
    assert error.error_message.endswith(CUT_NOTE)
    assert not after.error_message and after.infer_response.outputs[0].shape == [1, 10]
    assert (success - before[0], fail - before[1]) == (1, 1)


def test_a_frame_within_the_limit_is_left_as_is() -> None:
    frame = pb.ModelStreamInferResponse(
        error_message="INVALID_ARGUMENT: no", infer_response=pb.ModelInferResponse(id="r")
    )
    fit_error_frame(frame, 64)
    assert frame.error_message == "INVALID_ARGUMENT: no" and frame.infer_response.id == "r"


def test_a_message_is_cut_on_a_character_boundary_to_the_limit_exactly() -> None:
    message = "INVALID_ARGUMENT: " + "\u03bb" * 40_000  # 2 bytes a character
    frame = pb.ModelStreamInferResponse(
        error_message=message, infer_response=pb.ModelInferResponse(id="r" * 100)
    )
    fit_error_frame(frame, 1000)
    assert 990 <= frame.ByteSize() <= 1000, frame.ByteSize()
    assert frame.error_message.startswith("INVALID_ARGUMENT: \u03bb") and frame.infer_response.id == "r" * 100


def refusal_frame(**echo: str) -> pb.ModelStreamInferResponse:
    message = (
        "RESOURCE_EXHAUSTED: request message larger than max (8000 vs. 4096 bytes, the server's "
        "max_message_bytes)"
    )
    return pb.ModelStreamInferResponse(error_message=message, infer_response=pb.ModelInferResponse(**echo))


def test_a_long_echoed_version_is_dropped_before_the_status_and_reason_are() -> None:
    """An oversized frame's head may echo a 7,000-byte version into a 4 KiB limit: the message had
    been cut to the note alone, status and reason lost, though dropping the version left room."""
    frame = refusal_frame(id="id-ver", model_name="mlp", model_version="9" * 7000)
    fit_error_frame(frame, 4096)
    assert frame.ByteSize() <= 4096
    assert frame.error_message == refusal_frame().error_message  # whole
    answer = frame.infer_response
    assert (answer.id, answer.model_name, answer.model_version) == ("id-ver", "mlp", "")


def test_an_id_too_long_for_the_limit_goes_last_after_the_message_is_cut() -> None:
    frame = refusal_frame(id="i" * 4000, model_name="n" * 3000)
    fit_error_frame(frame, 4096)
    assert frame.ByteSize() <= 4096
    assert frame.infer_response.id == "i" * 4000 and not frame.infer_response.model_name
    assert frame.error_message.startswith("RESOURCE_EXHAUSTED") and frame.error_message.endswith(CUT_NOTE)
    frame = refusal_frame(id="i" * 16_000)
    fit_error_frame(frame, 4096)
    assert frame.ByteSize() <= 4096 and not frame.infer_response.id
    assert frame.error_message == refusal_frame().error_message
