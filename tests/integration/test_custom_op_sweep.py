"""scripts/row_mixing_sweep.py over its custom corpus (scripts/custom_op_cases.py) against a real
server: graphs with onnxruntime's fused, quantized and transformer ops and ai.onnx.ml's. Before
session 56 such ops were taken as row-wise and nothing after them was read: with their outputs'
shapes declared, 30 of these models loaded batched and answered four clients' requests with each
other's rows, OK; without, 91 failed their load for want of an output shape. Now the sweep exits 0,
the mixing ones are refused naming the op, and the row-wise ones batch and answer as alone, with
their outputs' shapes declared or left to the server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_row_mixing_sweep import Sweep, run_sweep

pytestmark = [pytest.mark.serial, pytest.mark.timeout(300)]

# Each loaded batched and mixed rows with status OK (outputs declared) before session 56.
REFUSED = {
    "custom_opt_gelu_mixing": "the ReduceSum node making 'mixs' works along the batch's axis",
    "custom_qstatic_qop_softmax_axis0_mixing": "QLinearSoftmax node",
    "custom_attention_over_batch_mixing": "the Attention node making 'a' (com.microsoft)",
    "custom_ml_normalizer_1d_over_batch_mixing": "the Normalizer node making 'y' (ai.onnx.ml)",
    "custom_unique_mixing": "the Unique node making 'u' is an op of domain 'com.microsoft'",
    "custom_opt_convnet_nchwc_mixing": "domain 'com.microsoft.nchwc'",
    "custom_ms_trilu_over_batch_mixing": "the Trilu node making 'y' (com.microsoft)",
}
# Row-wise, each through a stand-in: onnxruntime's optimizer and quantizer, transformer ops, ml ops.
BATCHED = (
    "custom_opt_gelu_rowwise",
    "custom_opt_skiplayernorm_rowwise",
    "custom_opt_convnet_fusedconv_rowwise",
    "custom_qstatic_qop_conv_add_mul_concat_gap_rowwise",
    "custom_qdynamic_opt_mlp_mixing",  # made per row at load (row_quantization.py): right, batched
    "custom_attention_rowwise",
    "custom_multiheadattention_rowwise",
    "custom_embedlayernorm_rowwise",
    "custom_ml_featurevectorizer_rowwise",
    "custom_ml_svmregressor_rowwise",
)


def run_custom(folder: Path, declare: bool) -> Sweep:
    return run_sweep(folder, ["--corpus", "custom", *(["--declare-outputs"] if declare else [])])


@pytest.fixture(scope="module", params=[True, False], ids=["declared", "inferred"])
def sweep(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sweep]:
    yield run_custom(tmp_path_factory.mktemp("custom-op-sweep"), declare=request.param)


def test_the_custom_corpus_exits_zero_with_none_wrong(sweep: Sweep) -> None:
    assert sweep.code == 0, sweep.output[-3000:]
    tested = [r for r in sweep.rows.values() if r["outcome"] != "skipped"]
    assert len(tested) >= 90, sweep.summary
    assert not [r for r in tested if r["outcome"] not in ("refused", "right")], sweep.summary
    assert "| WRONG with status OK | 0 |" in sweep.summary and "| INTERNAL | 0 |" in sweep.summary


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_ops_that_mix_rows_are_refused_naming_the_op(sweep: Sweep, case: str) -> None:
    row = sweep.rows[case]
    assert row["outcome"] == "refused", row
    # Outputs left to the server: a mixing one may have no shape, or the batch on another axis.
    if not any(other in row["detail"] for other in ("has no shape", "it is not the batch dimension")):
        assert "mixes the rows of a batch" in row["detail"] and REFUSED[case] in row["detail"], row


@pytest.mark.parametrize("case", BATCHED)
def test_row_wise_ops_are_batched_and_answer_as_alone(sweep: Sweep, case: str) -> None:
    row = sweep.rows[case]
    assert row["outcome"] == "right" and row["max_batch_size"] == "8", row
    assert row["statuses"] == "OK,OK,OK,OK" and row["coalesced"] == "True", row
