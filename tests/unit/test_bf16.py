"""BF16 on onnxruntime (server/backends/bf16.py) and in the client's tensor table (clients/tensors.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from clients import tensors
from server import datatypes
from server.backends.bf16 import from_ort_value, to_ort_value
from server.backends.onnxruntime_backend import CPU, BackendLoadError, OrtBackend, OrtOptions
from tests.support.bf16_models import bf16_model, bf16_with_string_model

BF16 = np.dtype(ml_dtypes.bfloat16)


def bits(array: np.ndarray) -> list[int]:
    return list(np.require(array, requirements="C").view(np.uint16).reshape(-1).tolist())


@pytest.mark.parametrize("shape", [(2, 3), (0, 4), ()])
def test_ort_value_round_trip_keeps_every_bit(shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(0).integers(0, 2**16, shape, dtype=np.uint16).view(BF16)
    value = to_ort_value(x)
    assert value.data_type() == "tensor(bfloat16)"
    out = from_ort_value(value)
    assert out.dtype == BF16 and out.shape == x.shape and bits(out) == bits(x)
    del value  # the array owns a copy: it outlives the OrtValue
    assert bits(out) == bits(x)


def test_a_non_contiguous_bf16_input_is_sent_in_c_order() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3).astype(BF16).T
    assert bits(from_ort_value(to_ort_value(x))) == bits(x)


def test_other_types_pass_through_ort_values() -> None:
    x = np.arange(4, dtype=np.int64)
    np.testing.assert_array_equal(from_ort_value(to_ort_value(x)), x)


async def test_backend_runs_a_bf16_model(tmp_path: Path) -> None:
    executor = ThreadPoolExecutor(max_workers=1)
    backend = OrtBackend(bf16_model(tmp_path / "m.onnx"), OrtOptions(), [(CPU, {})], executor, model_name="m")
    try:
        x = np.asarray([[1.5, -2, 0.25, 3e38]], np.float32).astype(BF16)
        out = await backend.run({"x": x})
        assert out["y"].dtype == BF16 and bits(out["y"]) == bits(x)
        assert out["doubled"].astype(np.float32)[0, :3].tolist() == [3.0, -4.0, 0.5]
        np.testing.assert_array_equal(out["wide"], x.astype(np.float32))
        empty = await backend.run({"x": np.zeros((0, 4), BF16)})
        assert empty["y"].shape == (0, 4) and empty["y"].dtype == BF16
    finally:
        backend.close()


def test_backend_refuses_bf16_beside_string_inputs_by_name(tmp_path: Path) -> None:
    executor = ThreadPoolExecutor(max_workers=1)
    with pytest.raises(BackendLoadError, match=r"model 'm': .*cannot have string inputs \('s'\)"):
        OrtBackend(
            bf16_with_string_model(tmp_path / "m.onnx"), OrtOptions(), [(CPU, {})], executor, model_name="m"
        )
    with pytest.raises(RuntimeError):  # the backend shut the executor it owned
        executor.submit(print)


def test_the_datatype_tables_name_bf16() -> None:
    assert datatypes.from_numpy(BF16).wire == "BF16"
    assert datatypes.BY_ONNX["tensor(bfloat16)"].wire == "BF16"
    assert tensors.wire_datatype(np.zeros(2, BF16)) == "BF16"
    with pytest.raises(TypeError, match="no KServe v2 datatype"):  # a 2-byte void is not bfloat16
        tensors.wire_datatype(np.zeros(2, np.dtype("V2")))


def test_client_decodes_bf16_outputs() -> None:
    x = np.asarray([[0.5, -1]], np.float32).astype(BF16)
    request = tensors.build_request("m", {"x": x})
    assert request.inputs[0].datatype == "BF16" and request.raw_input_contents[0] == x.tobytes()
    response = tensors.pb.ModelInferResponse(raw_output_contents=[x.tobytes()])
    response.outputs.add(name="y", datatype="BF16", shape=[1, 2])
    out = tensors.decode_response(response)["y"]
    assert out.dtype == BF16 and bits(out) == bits(x)
