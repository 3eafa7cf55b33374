"""Stand-ins for ops outside ONNX's domain (server/backends/onnx_stand_ins.py and its neighbours),
over the custom corpus of scripts/custom_op_cases.py: each stand-in gives its op's outputs the
shapes onnxruntime gives them (the load completes an undeclared output from them), and the reading
refuses exactly the graphs whose rows onnxruntime mixes (session 56: 30 of them had loaded batched)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from server.backends.onnx_output_shapes import refined_outputs
from server.backends.onnx_row_mixing import row_mixing_outputs

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
# Made per row at load (row_quantization.py): batched although onnxruntime's merged run mixes them.
PER_ROW_AT_LOAD = {
    "custom_dynamicquantizematmul_mixing",
    "custom_qdynamic_opt_mlp_mixing",
    "custom_dql_matmulintegertofloat_mixing",
}
# Not read (no stand-in): refused although row-wise (README, "Ops that mix the rows of a batch").
NOT_READ = {"custom_opt_convnet_nchwc_rowwise"}


@pytest.fixture(scope="module")
def corpus() -> Iterator[tuple[ModuleType, list[Any]]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(SCRIPTS))
        import custom_op_cases
        import row_mixing_cases

        cases = [row_mixing_cases.build(source) for source in custom_op_cases.custom_sources()]
        yield row_mixing_cases, cases
    for name in ("custom_op_cases", "row_mixing_cases"):
        sys.modules.pop(name, None)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def test_every_case_of_the_corpus_is_built(corpus: tuple[ModuleType, list[Any]]) -> None:
    cases_module, cases = corpus
    built = [case for case in cases if isinstance(case, cases_module.Case)]
    assert len(built) == len(cases) >= 95


def test_an_undeclared_output_gets_the_shape_onnxruntime_gives_it(
    corpus: tuple[ModuleType, list[Any]],
) -> None:
    """Each row-wise case, its outputs' shapes cleared: completed from the stand-ins' shapes, with
    the batch's symbol first and the rest as onnxruntime's run of four rows gives them."""
    _, cases = corpus
    checked, wrong = 0, []
    for case in cases:
        if not case.name.endswith("_rowwise") or case.name in NOT_READ:
            continue
        session = _session(case.model)
        merged = {k: np.concatenate([r.feeds[k] for r in case.requests]) for k in case.requests[0].feeds}
        got = dict(zip(case.outputs, session.run(None, merged), strict=True))
        for value in refined_outputs(case.model):
            dims, shape = _dims(value), np.asarray(got[value.name]).shape
            checked += 1
            if len(dims) != len(shape) or dims[0] != "N" or [d for d in dims[1:]] != list(shape[1:]):
                wrong.append(f"{case.name}: {value.name} completed {dims}, onnxruntime {shape}")
    assert checked >= 45 and not wrong, wrong


def test_the_reading_refuses_exactly_what_onnxruntime_mixes(corpus: tuple[ModuleType, list[Any]]) -> None:
    _, cases = corpus
    disagree = []
    for case in cases:
        mixed = row_mixing_outputs(case.model)
        expected = (case.oracle_mixes and case.name not in PER_ROW_AT_LOAD) or case.name in NOT_READ
        if bool(mixed) != expected and not (case.oracle_mixes and _no_batch_axis(case.model)):
            disagree.append(f"{case.name}: oracle {case.oracle_mixes}, read {mixed}")
    assert not disagree, disagree


def _no_batch_axis(model: onnx.ModelProto) -> bool:
    """An output onnxruntime gives no batch axis ([K, K] from x^T x): refused by the load's other
    check (its first dim is not the batch's), whatever the reading says."""
    return any(
        value.type.tensor_type.shape.dim[:1] and _dims(value)[0] != "N" for value in refined_outputs(model)
    )
