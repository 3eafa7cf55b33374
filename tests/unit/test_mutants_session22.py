"""Tests for the survivors of the twenty-second session's mutation run (tests/MUTANTS.md, "Run of
2026-12-02 (twenty-second session)"): the scan for Div/Mod marks, config completion's batch rules,
a batch's settling and scatter. Each test names the mutant(s) it kills."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from batcher.batch_io import settle_batch
from batcher.errors import OutputNotSplit, OutputRowsWrong
from batcher.form import Pending
from batcher.queue import Request, Ticket
from batcher.scatter import scatter
from batcher.stats import ModelStats
from batcher.types import Tensors
from protos import model_config_pb2 as mc
from server.backends import int_division_scan
from server.backends.int_division_scan import may_divide
from server.models.config_errors import ConfigError
from server.models.onnx_completion import OnnxTensor, _not_batch, complete_from_onnx
from tests.support.division_models import save

NS = (10, 20, 30, 40)


# --- server/backends/int_division_scan.py -------------------------------------------------------


def _model_bytes(tmp_path: Path, op: str) -> bytes:
    """y = op(x, x) on int32: "Add" holds no mark, "Div" does."""
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT32, [3])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [3])],
    )
    path = save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / f"{op}.onnx"
    )
    return path.read_bytes()


# Unknown fields of every scalar wire type (protobuf keeps them; onnx loads the model): field 100
# varint (a 2-byte key, a 2-byte value), 101 fixed64, 102 fixed32. Their payloads end in 0xff bytes,
# which a walk that stepped a byte short would read as an unfinished key.
SCALARS = b"\xa0\x06\xac\x02" + b"\xa9\x06" + b"\x01" * 7 + b"\xff" + b"\xb5\x06" + b"\x01" * 3 + b"\xff"


@pytest.mark.parametrize("op", ["Add", "Div"])
def test_unknown_scalar_fields_of_every_wire_type_are_stepped_over(tmp_path: Path, op: str) -> None:
    """Kills `_fields__mutmut_22/23/24` (fixed64 `pos = 8`, `-= 8`, `+= 9`) and `_26/27/28` (fixed32
    `pos = 4`, `-= 4`, `+= 5`): ONNX's own messages hold no fixed-width fields at the levels walked,
    so only unknown fields (a newer onnx's, or a tool's) reach these steps. Before the graph and
    after it: a wrong step either misreads the rest (answering True, not False) or loops."""
    data = _model_bytes(tmp_path, op)
    for placed in (SCALARS + data, data + SCALARS):
        model = onnx.load_model_from_string(placed)  # protobuf takes it: a valid model file
        assert [n.op_type for n in model.graph.node] == [op]
        (tmp_path / "odd.onnx").write_bytes(placed)
        assert may_divide(tmp_path / "odd.onnx") is (op == "Div")


def test_a_key_of_eleven_bytes_is_not_walked(tmp_path: Path) -> None:
    """Kills `_varint__mutmut_3` (`pos < end or shift < 64`): a varint runs 10 bytes at most, and
    protobuf refuses a longer one, so the walk must not read it as a key and walk on to False."""
    eleven = b"\xa0\x86" + b"\x80" * 8 + b"\x00"  # field 100, varint, in 11 bytes
    data = _model_bytes(tmp_path, "Add") + eleven + b"\x01"
    with pytest.raises(DecodeError):
        onnx.load_model_from_string(data)
    (tmp_path / "odd.onnx").write_bytes(data)
    assert may_divide(tmp_path / "odd.onnx")


def test_a_field_longer_than_its_message_is_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kills `_fields__mutmut_37` (`pos - size > end`): the answer is True either way (a read past
    the message ends the walk), but a crafted length must be refused before anything is read, not
    read (a length of 2**62 would be allocated by the read)."""
    data = _model_bytes(tmp_path, "Add") + b"\x12\x40Mod"  # field 2: 64 bytes said, 3 there
    (tmp_path / "long.onnx").write_bytes(data)
    read: list[tuple[int, int]] = []
    holds = int_division_scan._holds_mark

    def spy(file: object, start: int, end: int, marks: tuple[bytes, ...]) -> bool:
        read.append((start, end))
        return holds(file, start, end, marks)  # type: ignore[arg-type]

    monkeypatch.setattr(int_division_scan, "_holds_mark", spy)
    assert may_divide(tmp_path / "long.onnx")
    assert read and all(end <= len(data) for _, end in read)


# --- server/models/onnx_completion.py -----------------------------------------------------------


def test_a_scalar_tensor_has_no_first_dim_to_refuse() -> None:
    """Kills `_not_batch__mutmut_3` (`tensor.shape[0] if tensor.shape or True`): a scalar's shape
    has no first dim, so nothing says it is not the batch (the mutant raises IndexError)."""
    scalar = OnnxTensor("s", "tensor(float)", [])
    assert _not_batch(scalar, [scalar, OnnxTensor("y", "tensor(float)", ["N", "s"])]) is None


def test_a_first_dim_of_minus_one_is_no_symbol_to_match() -> None:
    """Kills `_not_batch__mutmut_5` (`not isinstance(first, str) and not first`): a first dim given
    as -1 (tuples may say so) names no symbol, so the graph's other -1 dims do not make it "not the
    batch": the model batches."""
    x = ("x", "tensor(float)", [-1, 4])
    y = ("y", "tensor(float)", [-1, -1])
    assert _not_batch(OnnxTensor(*x), [OnnxTensor(*x), OnnxTensor(*y)]) is None
    done = complete_from_onnx(mc.ModelConfig(name="m"), [x], [y], default_max_batch_size=8)
    assert done.max_batch_size == 8 and done.HasField("dynamic_batching")


def test_the_refusal_of_a_first_dim_that_is_not_the_batch_says_what_to_set() -> None:
    """Kills `_model_dims__mutmut_15` (the message's "set max_batch_size: 0" changed)."""
    config = mc.ModelConfig(name="m", max_batch_size=4)
    with pytest.raises(ConfigError, match=r"so it is not the batch dimension .*; set max_batch_size: 0$"):
        complete_from_onnx(config, [("x", "tensor(float)", ["N", "M"])], [("y", "tensor(float)", ["M"])])


@pytest.mark.parametrize("default, batching", [(1, False), (2, True)])
def test_dynamic_batching_is_turned_on_only_for_a_default_of_more_than_one_row(
    default: int, batching: bool
) -> None:
    """Kills `complete_from_onnx__mutmut_66` (`>= 1`: a batch of at most 1 row would be "batched")
    and `__mutmut_67` (`> 2`: a default of 2 would not be)."""
    x = ("x", "tensor(float)", ["N", 4])
    y = ("y", "tensor(float)", ["N", 2])
    done = complete_from_onnx(mc.ModelConfig(name="m"), [x], [y], default_max_batch_size=default)
    assert done.max_batch_size == default
    assert done.HasField("dynamic_batching") is batching


def test_a_graph_input_left_out_of_a_listing_config_is_refused_saying_why() -> None:
    """Kills `complete_from_onnx__mutmut_110/111/112` (the message's last line changed)."""
    config = mc.ModelConfig(name="m")
    config.input.add(name="a", data_type=mc.TYPE_FP32, dims=[4])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[4])
    graph_in = [("a", "tensor(float)", [4]), ("b", "tensor(float)", [4])]
    with pytest.raises(ConfigError) as err:
        complete_from_onnx(config, graph_in, [("y", "tensor(float)", [4])])
    assert str(err.value) == (
        "config: the ONNX model's inputs ['b'] are not in the config's inputs (a config that lists "
        "inputs and outputs is not completed from the graph, as in Triton)"
    )


# --- batcher/batch_io.py: settle_batch -----------------------------------------------------------


def _request(rows: int, seq: int, *, hard: float | None = None) -> Request:
    future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
    inputs = {"x": np.zeros((rows, 2), np.float32)}
    return Pending(inputs, rows, 1, 0.0, seq, Ticket(future), hard=hard)


async def test_a_request_run_alone_counts_the_runs_rows() -> None:
    """Kills `settle_batch__mutmut_12` (`alone = None`) and `__mutmut_23` (`rows if alone and
    False`): a request run alone (no dynamic batching: admitted as 1 row) counts the run's rows,
    3 here, as Triton's inference_count does; a copy's rows likewise."""
    stats = ModelStats()
    p = _request(1, 1)
    settle_batch([p], [{"y": np.zeros(3, np.float32)}], 3, 0.0, stats, NS)
    assert stats.inference_count == 3
    copy = _request(1, 2)
    copy.counted = False
    settle_batch([copy], [{"y": np.zeros(3, np.float32)}], 3, 0.0, stats, NS)
    assert stats.inference_count == 6


class AnsweredElsewhere(Exception):
    pass


async def test_a_request_already_answered_is_not_counted_late() -> None:
    """Kills `settle_batch__mutmut_27` (`p.counted or p.handle.future.cancelled()`): a request
    whose future is already done without a cancellation (answered elsewhere, e.g. failed by a
    drain) is not a computed-late outcome, though the run ended past its deadline."""
    stats = ModelStats()
    p = _request(1, 1, hard=1.0)
    p.handle.future.set_exception(AnsweredElsewhere())
    settle_batch([p], [{"y": np.zeros(1, np.float32)}], 1, 5.0, stats, NS)
    assert stats.late == 0
    assert isinstance(p.handle.future.exception(), AnsweredElsewhere)


async def test_the_computed_callback_is_told_the_runs_three_compute_times() -> None:
    """Kills `settle_batch__mutmut_69` (`p.computed(None)`): gather, run and scatter, from `ns`."""
    told: list[tuple[int, int, int]] = []
    p = _request(1, 1)
    p.computed = told.append
    settle_batch([p], [{"y": np.zeros(1, np.float32)}], 1, 0.0, ModelStats(), NS)
    assert told == [(10, 10, 10)]


# --- batcher/scatter.py: scatter ------------------------------------------------------------------


def test_a_scalar_output_per_request_is_refused_as_rows_wrong() -> None:
    """Kills `scatter__mutmut_18` (`arr.ndim >= 0`: the mutant indexes a 0-d array, IndexError)."""
    with pytest.raises(OutputRowsWrong, match=r"output 's' with shape \(\) for a batch of 3 rows in 2"):
        scatter({"s": np.array(1.0, np.float32)}, [0, 1, 3], per_request=True)


def test_outputs_per_request_beside_outputs_per_row_split_by_each_request_own_rows() -> None:
    """Kills `scatter__mutmut_45` (`stop + start` in the refusal's row count) and `__mutmut_47`
    (every output sliced by the request's index): offsets [0, 2, 3] give the second request, of
    one row, row 2 of a per-row output and row 1 of a per-request one; the first request, of 2
    rows, fails, and a request of 2 rows at offset 3 is said to have 2 rows, not 8."""
    outputs = {"rows": np.arange(3) * 10, "each": np.arange(2) + 100}
    first, second = scatter(outputs, [0, 2, 3], per_request=True)
    assert isinstance(first, OutputNotSplit) and "this request has 2 rows" in str(first)
    assert not isinstance(second, OutputNotSplit)
    assert second["rows"].tolist() == [20] and second["each"].tolist() == [101]
    parts = scatter({"rows": np.arange(5), "each": np.arange(2)}, [0, 3, 5], per_request=True)
    assert [str(p).rsplit("this request has ", 1)[1][:6] for p in parts] == ["3 rows", "2 rows"]
