"""The fuzz target (tests/support/fuzz_target.py) under hypothesis: raw bytes, near-valid requests
and near-valid requests with their bytes mutated. Any answer but a client status is a failure.

scripts/fuzz.sh runs the same target for longer (atheris; HYPOTHESIS_PROFILE=long here).
"""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protos import grpc_service_pb2 as pb
from server.errors import InvalidRequest, status_for
from server.models.versions import ModelVersion
from server.protocol.infer_job import InferJob
from tests.support.fuzz_target import check_bytes, check_request, fuzz_models, is_client_error
from tests.support.request_strategies import mutated, near_valid_requests

Models = dict[str, ModelVersion]


@pytest.fixture(scope="module")
def models() -> Models:
    return fuzz_models()


def model_and_request(models: Models) -> st.SearchStrategy[tuple[ModelVersion, pb.ModelInferRequest]]:
    return st.sampled_from(sorted(models)).flatmap(
        lambda name: st.tuples(st.just(models[name]), near_valid_requests(models[name].signature))
    )


@given(data=st.binary(max_size=256))
def test_arbitrary_bytes_are_parsed_or_refused_as_the_clients_mistake(models: Models, data: bytes) -> None:
    check_bytes(data, models)


@given(data=st.data())
def test_near_valid_requests_are_served_or_refused_as_the_clients_mistake(
    models: Models, data: st.DataObject
) -> None:
    model, request = data.draw(model_and_request(models))
    job = check_request(request, model)
    if job is None:
        return
    sig = model.signature
    assert set(job.inputs) <= set(sig.inputs)
    for name, array in job.inputs.items():
        assert array.dtype == sig.inputs[name].datatype.numpy
    rows = job.admission.rows
    assert 1 <= rows <= max(sig.max_batch_size, 1)
    if sig.max_batch_size > 0:
        assert all(array.shape[0] == rows for array in job.inputs.values())
    assert set(job.names) <= set(sig.outputs)
    assert len(set(job.names)) == len(job.names)


@given(data=st.data())
def test_mutated_bytes_of_near_valid_requests(models: Models, data: st.DataObject) -> None:
    _, request = data.draw(model_and_request(models))
    check_bytes(data.draw(mutated(request.SerializeToString())), models)


def test_the_target_fails_on_an_error_that_is_not_the_clients() -> None:
    # The oracle itself: a client mistake passes, anything unmapped does not.
    assert is_client_error(InvalidRequest("input 'x': wrong"))
    assert not is_client_error(ValueError("numpy said no"))
    assert not is_client_error(OverflowError("Python integer 300 out of bounds for uint8"))


def test_an_empty_message_is_refused_naming_the_missing_input(models: Models) -> None:
    for model in models.values():
        with pytest.raises(InvalidRequest, match="but missing required input") as info:
            InferJob.prepare(model, pb.ModelInferRequest(), None)
        assert status_for(info.value)[0] == grpc.StatusCode.INVALID_ARGUMENT
