"""Classes made, and answers had at once encoded, off the event loop when they hold many strings
(a hostile-client tester, session 49): a request for all 262,144 classes of a 4-row output held
every other call on the server for 2.5 s, made once to size the answer and once to send it; a
response-cache hit of 524,288 strings, and a fast-path answer, were encoded on the loop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.models.response_cache import ResponseCache
from server.protocol import classification, infer_job
from server.protocol.answer_checks import ENCODE_OFF_LOOP_STRINGS, AnswerCheck
from server.protocol.classification import Classes
from server.protocol.infer_job import InferJob
from tests.support.fuzz_target import served

WIDE = ENCODE_OFF_LOOP_STRINGS // 2 + 1  # two rows of all of it: past the bound


def _recording(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """The threads that call `module.name` from now on."""
    threads: list[int] = []
    real: Callable[..., Any] = getattr(module, name)

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    return threads


def _job(classes: int | None, width: int = WIDE) -> InferJob:
    config = mc.ModelConfig(name="wide", max_batch_size=8)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[1])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[width])
    request = pb.ModelInferRequest(model_name="wide")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 1])
    request.raw_input_contents.append(np.zeros((2, 1), np.float32).tobytes())
    wanted = request.outputs.add(name="y")
    if classes is not None:
        wanted.parameters["classification"].int64_param = classes
    return InferJob.prepare(served(config), request, None)


def _outputs(width: int = WIDE) -> dict[str, np.ndarray]:
    return {"y": np.arange(2 * width, dtype=np.float32).reshape(2, width)}


@pytest.mark.parametrize(("classes", "off_loop"), [(3, False), (WIDE, True)])
async def test_many_classes_are_made_and_encoded_in_a_thread(
    monkeypatch: pytest.MonkeyPatch, classes: int, off_loop: bool
) -> None:
    made = _recording(monkeypatch, classification, "top_classes")
    encoded = _recording(monkeypatch, infer_job.codec, "encode_response")
    response = await _job(classes)._computed_later(_outputs())
    assert list(response.outputs[0].shape) == [2, min(classes, WIDE)]
    assert response.outputs[0].datatype == "BYTES"
    here = threading.get_ident()
    assert len(made) == 1 and (made[0] != here) is off_loop
    assert len(encoded) == 1 and (encoded[0] != here) is off_loop


def _check(classes: Classes, limit: int) -> AnswerCheck:
    header = pb.ModelInferResponse(model_name="wide", model_version="1")
    return AnswerCheck(["y"], None, limit, None, header, classes)


def test_the_check_sizes_many_classes_by_their_least_and_makes_none(monkeypatch: pytest.MonkeyPatch) -> None:
    made = _recording(monkeypatch, classification, "top_classes")
    many = Classes({"y": WIDE}, {}, batched=True)
    _check(many, limit=64 << 20)(_outputs())
    assert made == []
    # Their least (a length a string, 2 x WIDE of them) over the limit is refused now.
    with pytest.raises(Exception, match="answer message larger than max"):
        _check(many, limit=4 * WIDE)(_outputs())
    assert made == []
    _check(Classes({"y": 3}, {}, batched=True), limit=64 << 20)(_outputs())
    assert len(made) == 1  # few: made and sized exactly, as sent


def test_a_classified_stand_in_has_the_shape_of_the_classes() -> None:
    outputs = {"y": np.zeros((3, 2, 5), np.float32), "z": np.ones(4, np.float32)}
    shaped = Classes({"y": 7}, {}, batched=True).shaped(outputs)
    assert shaped["y"].shape == (3, 7) and shaped["y"].dtype == object
    assert shaped["z"] is outputs["z"]
    assert Classes({"y": 4}, {}, batched=False).shaped(outputs)["y"].shape == (4,)
    assert Classes({"y": 40}, {}, batched=False).shaped(outputs)["y"].shape == (30,)


def test_a_classified_output_counts_its_rows_times_its_k() -> None:
    classes = Classes({"y": 5}, {}, batched=True)
    assert classes.strings("y", np.zeros((3, 4))) == 12  # k above the row's 4 values: 4
    assert classes.strings("y", np.zeros((3, 9))) == 15
    assert Classes({"y": 5}, {}, batched=False).strings("y", np.zeros((3, 9))) == 5


async def test_a_cache_hit_of_many_strings_is_encoded_by_answer_later_in_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = _job(WIDE)
    job.served.response_cache = ResponseCache(256 << 20)
    first = _job(WIDE)
    first.served = job.served
    assert first.answer_now() is None  # a miss: the batcher's (never run here)
    first.served.response_cache.insert(first.cache_key, "wide", _outputs(), first.cache_generation)
    encoded = _recording(monkeypatch, infer_job.codec, "encode_response")
    assert job.answer_now() is None and job.made is not None and encoded == []
    response = await job.answer_later()
    assert encoded[0] != threading.get_ident()
    assert list(response.outputs[0].shape) == [2, WIDE]
    assert job.served.stats.cache_hit.count == 1 and job.made is None


def test_a_batch_of_no_rows_makes_no_classes() -> None:
    classes = Classes({"y": 5}, {}, batched=True)
    empty = {"y": np.zeros((0, 9), np.float32)}
    assert classes.strings("y", empty["y"]) == 0
    assert classes.shaped(empty)["y"].shape == (0, 0)
