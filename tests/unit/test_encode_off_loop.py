"""An answer with many strings is encoded in a thread, not on the event loop (3,000,000 BYTES
elements had held every other call on the server for 2-3 s); small answers stay on the loop."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.protocol import codec, infer_job
from server.protocol.infer_job import ENCODE_OFF_LOOP_STRINGS, InferJob
from tests.support.fuzz_target import served


@pytest.mark.parametrize(("strings", "off_loop"), [(10, False), (ENCODE_OFF_LOOP_STRINGS + 1, True)])
async def test_many_strings_are_encoded_off_the_loop(
    monkeypatch: pytest.MonkeyPatch, strings: int, off_loop: bool
) -> None:
    config = mc.ModelConfig(name="words", max_batch_size=0)
    config.input.add(name="n", data_type=mc.TYPE_INT64, dims=[1])
    config.output.add(name="s", data_type=mc.TYPE_STRING, dims=[-1])
    request = pb.ModelInferRequest(model_name="words")
    request.inputs.add(name="n", datatype="INT64", shape=[1])
    request.raw_input_contents.append(np.array([strings], np.int64).tobytes())
    job = InferJob.prepare(served(config), request, None)
    threads: list[int] = []
    encode = codec.encode_response

    def recording(*args: object, **kwargs: object) -> pb.ModelInferResponse:
        threads.append(threading.get_ident())
        return encode(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(infer_job.codec, "encode_response", recording)
    outputs = {"s": np.array([b"w"] * strings, dtype=object)}
    response = await job._computed_later(outputs)
    assert list(response.outputs[0].shape) == [strings]
    assert (threads[0] != threading.get_ident()) is off_loop
