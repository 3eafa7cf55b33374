"""The cases of scripts/row_mixing_sweep.py: onnx's own backend node tests and its pytorch-converted
models, each made "batched" (dim 0 of every graph input becomes the symbol 'N', output shapes are
cleared so the server has to infer them), with four one-row requests and onnxruntime's answer to each
request alone, written out as a Triton repository that asks for max_batch_size 8 and a 20 ms queue delay.

Cases are built in memory from the installed onnx, so the sweep follows onnx's releases by itself.
"""

from __future__ import annotations

import copy
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

REQUESTS = 4  # one-row requests per case, sent together so that they coalesce into one run
# Element types the Triton protocol carries as numpy arrays (no strings, no bfloat16, no float8).
WIRE_TYPES = frozenset({
    TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT8, TensorProto.INT16,
    TensorProto.INT32, TensorProto.INT64, TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32,
    TensorProto.UINT64, TensorProto.BOOL,
})  # fmt: skip
CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
dynamic_batching {{ max_queue_delay_microseconds: 20000 }}
"""


@dataclass(frozen=True)
class Source:
    """One test of onnx's: its model as onnx ships it and the inputs of its first data set."""

    name: str
    model: onnx.ModelProto
    inputs: tuple[np.ndarray, ...] | None  # None: a sequence, map or absent optional among them


@dataclass(frozen=True)
class Request:
    """One one-row request and what onnxruntime answers to it alone."""

    feeds: dict[str, np.ndarray]
    expected: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class Case:
    """A source made batched: what the sweep serves, sends and compares."""

    name: str
    ops: tuple[str, ...]
    model: onnx.ModelProto
    outputs: tuple[str, ...]
    requests: tuple[Request, ...]
    oracle_mixes: bool  # onnxruntime's own run of the requests merged differs from each alone
    oracle_detail: str


@dataclass(frozen=True)
class Skipped:
    """A source the sweep cannot test, and why (counted in the summary, not an error)."""

    name: str
    ops: tuple[str, ...]
    reason: str


def sources() -> list[Source]:
    """Every candidate, sorted by name, so that a sample of them is the same on every run."""
    from onnx.backend.test.case import node  # the generators; ImportError where onnx ships without them

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        found = [
            Source(c.name, c.model, _tensors(c.data_sets[0][0]))
            for c in node.collect_testcases(None)
            if c.model is not None and c.data_sets
        ]
    converted = Path(onnx.__file__).parent / "backend" / "test" / "data" / "pytorch-converted"
    for folder in sorted(p for p in converted.glob("*") if (p / "model.onnx").is_file()):
        tensors = sorted((folder / "test_data_set_0").glob("input_*.pb"))
        inputs = tuple(numpy_helper.to_array(onnx.load_tensor(str(p))) for p in tensors)
        found.append(Source("pt_" + folder.name, onnx.load(str(folder / "model.onnx")), inputs))
    return sorted(found, key=lambda s: s.name)


def _tensors(values: Sequence[object]) -> tuple[np.ndarray, ...] | None:
    """A data set's inputs as arrays, or None if one is not a tensor."""
    if not all(isinstance(v, (np.ndarray, np.generic)) for v in values):
        return None
    return tuple(np.asarray(v) for v in values)


def sample_order(count: int, limit: int | None) -> list[int]:
    """Indices of `count` sources in the order to build them: every k-th first (k = count // limit),
    then the next offset, so a short run is spread over the whole corpus and still reaches `limit`
    built cases when some are skipped."""
    if limit is None or limit >= count:
        return list(range(count))
    step = max(1, count // max(1, limit))
    return sorted(range(count), key=lambda i: (i % step, i))


def build_cases(
    all_sources: Sequence[Source], limit: int | None, only: Sequence[str]
) -> list[Case | Skipped]:
    """The cases named in `only`, plus cases sampled from the rest until `limit` of them are built
    (all of them with neither), with the sources skipped on the way. ValueError for an unknown name."""
    by_name = {s.name: s for s in all_sources}
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise ValueError(f"no such case in onnx {onnx.__version__}: {', '.join(unknown)}")
    chosen: list[Case | Skipped] = [build(by_name[n]) for n in dict.fromkeys(only)]
    if only and limit is None:
        return chosen
    named = set(only)
    rest = [s for s in all_sources if s.name not in named]
    built = 0
    for i in sample_order(len(rest), limit):
        if limit is not None and built >= limit:
            break
        case = build(rest[i])
        built += isinstance(case, Case)
        chosen.append(case)
    return chosen


def build(source: Source) -> Case | Skipped:
    """The batched case of one source, or why it cannot be tested."""
    ops = tuple(sorted({n.op_type for n in source.model.graph.node}))
    reason = _skip_reason(source.model, source.inputs)
    if reason or source.inputs is None:
        return Skipped(source.name, ops, reason or "a non-tensor input")
    names = _graph_inputs(source.model)
    try:
        _session(source.model).run(None, dict(zip(names, source.inputs, strict=True)))
        model = _batched(source.model, source.inputs)
        session = _session(model)
        requests = tuple(_request(session, names, source.name, source.inputs, k) for k in range(REQUESTS))
    except Exception as err:  # onnxruntime refuses the op (too new) or the one-row inputs (tied sizes)
        return Skipped(source.name, ops, "onnxruntime refuses it: " + (str(err).splitlines() or [""])[0][:80])
    mixes, detail = _oracle(session, requests)
    outputs = tuple(o.name for o in model.graph.output)
    return Case(source.name, ops, model, outputs, requests, mixes, detail)


def write_repository(cases: Sequence[Case], root: Path) -> None:
    """A Triton repository with one model per case, named as the case, asking to be batched."""
    root.mkdir(parents=True, exist_ok=True)
    for case in cases:
        folder = root / case.name / "1"
        folder.mkdir(parents=True, exist_ok=True)
        onnx.save(case.model, str(folder / "model.onnx"))
        (root / case.name / "config.pbtxt").write_text(CONFIG.format(name=case.name))


def same(got: np.ndarray, want: np.ndarray) -> bool:
    """Equal as the sweep reads it: floats to rtol 1e-3 / atol 1e-4 with NaN equal to NaN, and a
    shape that differs only by size-1 axes (an `[N]` output served as `[1, 1]`) counts as the same."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        if got.size != want.size:
            return False
        got = got.reshape(want.shape)
    if want.dtype.kind in "fc" or got.dtype.kind in "fc":
        return bool(
            np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-3, atol=1e-4, equal_nan=True)
        )
    return bool(np.array_equal(got, want))


def difference(got: np.ndarray, want: np.ndarray) -> str:
    """Where a served output first differs from the answer alone, for the results' detail."""
    if got.size != want.size:
        return f"served shape {got.shape}, alone {want.shape}"
    flat_got, flat_want = got.reshape(-1), want.reshape(-1)
    at = next((i for i in range(want.size) if not same(flat_got[i], flat_want[i])), 0)
    return f"element {at} of {want.shape}: served {flat_got[at]}, alone {flat_want[at]}"


def _graph_inputs(model: onnx.ModelProto) -> list[str]:
    """Names of the inputs a client sends (graph inputs that no initializer provides)."""
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _skip_reason(model: onnx.ModelProto, inputs: Sequence[np.ndarray] | None) -> str | None:
    """Why the protocol cannot carry this source's tensors as one-row requests, if it cannot."""
    if inputs is None:
        return "a non-tensor input"
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    declared = [i for i in graph.input if i.name not in inits]
    if len(declared) != len(inputs):
        return "inputs differ from the data set's"
    if any(not v.type.HasField("tensor_type") for v in [*declared, *graph.output]):
        return "non-tensor input or output"
    if any(v.type.tensor_type.elem_type not in WIRE_TYPES for v in [*declared, *graph.output]):
        return "a datatype the protocol does not carry"
    if any(x.ndim == 0 for x in inputs):
        return "a rank-0 input"
    if any(x.shape[0] == 0 for x in inputs):
        return "an input with an empty dim 0"
    return None


def _batched(model: onnx.ModelProto, inputs: Sequence[np.ndarray]) -> onnx.ModelProto:
    """A copy whose client inputs have 'N' as dim 0 and whose outputs have no shape."""
    batched = copy.deepcopy(model)
    graph = batched.graph
    inits = {i.name for i in graph.initializer}
    declared = [i for i in graph.input if i.name not in inits]
    for value, data in zip(declared, inputs, strict=True):
        tensor = value.type.tensor_type
        if not (tensor.HasField("shape") and len(tensor.shape.dim) >= 1):
            tensor.ClearField("shape")
            for size in data.shape:
                tensor.shape.dim.add().dim_value = size
        tensor.shape.dim[0].Clear()
        tensor.shape.dim[0].dim_param = "N"
    for output in graph.output:
        output.type.tensor_type.ClearField("shape")
    del graph.value_info[:]
    return batched


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A quiet CPU session of `model`."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _request(
    session: ort.InferenceSession, names: Sequence[str], case: str, inputs: Sequence[np.ndarray], k: int
) -> Request:
    """Request k: row k % d0 of each input, floats moved by noise and one-row ints by k, so that the
    four requests differ; plain rows where onnxruntime refuses the moved ones."""
    rng = np.random.default_rng(zlib.crc32(f"{case}/{k}".encode()))
    plain = {n: x[k % x.shape[0] :][:1].copy() for n, x in zip(names, inputs, strict=True)}
    moved = {n: _moved(x, inputs[i].shape[0], k, rng) for i, (n, x) in enumerate(plain.items())}
    try:
        return Request(moved, tuple(np.asarray(o) for o in session.run(None, moved)))
    except Exception:  # the moved values are out of the op's domain (an index, a size): plain rows
        return Request(plain, tuple(np.asarray(o) for o in session.run(None, plain)))


def _moved(row: np.ndarray, rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """`row` made distinct for request k: floats get 0.25*k*noise, ints of a one-row input get +k."""
    if row.dtype.kind == "f":
        return (row + 0.25 * k * rng.standard_normal(row.shape)).astype(row.dtype)
    if row.dtype.kind in "iu" and rows == 1 and k:
        return (row + k).astype(row.dtype)
    return row


def _oracle(session: ort.InferenceSession, requests: Sequence[Request]) -> tuple[bool, str]:
    """Whether onnxruntime's run of the requests merged into one batch differs from each alone:
    what a server that batches such a model would answer, before any server is involved."""
    merged = {n: np.concatenate([r.feeds[n] for r in requests]) for n in requests[0].feeds}
    try:
        outputs = session.run(None, merged)
    except Exception as err:
        return True, "merged run fails: " + (str(err).splitlines() or [""])[0][:100]
    for index, output in enumerate(np.asarray(o) for o in outputs):
        if output.ndim == 0 or output.shape[0] != len(requests):
            return True, f"output {index} has shape {output.shape}"
        for row, request in zip(_rows(output), requests, strict=True):
            if not same(row, request.expected[index]):
                return True, f"output {index} differs from a row alone"
    return False, ""


def _rows(output: np.ndarray) -> Iterator[np.ndarray]:
    """The one-row slices of a merged output."""
    for k in range(output.shape[0]):
        yield output[k : k + 1]
