"""Integer Div and Mod guarded against a divisor x86 `idiv` traps on: zero, and -1 under the type's
minimum (INT_MIN / -1 overflows).

x86 `idiv` raises SIGFPE on both, and onnxruntime divides integers with it: before 1.31 (1.23.2 is
the newest for Python 3.10) a zero divisor ends the whole server process, and every request in flight
with it (onnxruntime issue #27686); 1.31 checks for a zero but still traps on INT_MIN / -1 (int32 and
int64; narrower types are divided as int). A signal cannot be caught and resumed from Python, so such
a pair must never reach a Div or Mod: on every onnxruntime a model's integer Div/Mod nodes (in
subgraphs and model-local functions too: int_division_rewrite.py) are rewritten at load, divisor
`B` -> `Where(bad, 1, B)` (int_division_nodes.py; below opset 9, which has no Where, the same value
as `B + Cast(B == 0) + 2 * Cast(B == -1 where it must become 1)`), and each guarded node gets
extra graph outputs, the count of bad pairs it met (`ReduceSum(Cast(bad, INT64))`: a sum is 0 over an empty
tensor, where ReduceMax's value differs between onnxruntime versions). `bad` is `Equal(B, 0)`, and
for a 32/64-bit signed Div also `Equal(A, MIN) and Equal(B, -1)`, counted apart (its own flag). A
signed Mod by -1 is replaced by a Mod by 1 instead, the same answer (0) with no flag. The backend
fetches the counts with every run, never shows or sends them, and fails a batch whose count is not 0
with the inputs' fault (INVALID_ARGUMENT), as onnxruntime 1.31 does for a zero.

Left alone: a divisor that is a constant with no zero (and no -1 where it could overflow), float
types. A model whose weights are in external data files is guarded too: its session, made from the
rewritten bytes, reads them beside the model file (a Constant divisor stored there is not read:
not known safe, guarded). A node spelt in domain "ai.onnx" in a model importing only "" is typed
with the domain spelt "" (onnx's inference refuses the spelling, onnxruntime runs it). A model this
cannot rewrite (opset 6 or older, a divisor type shape inference cannot tell, a division in a
subgraph of a node other than If, Loop, Scan and SequenceMap: only custom domains have such nodes)
loads unguarded, with one WARNING line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, shape_inference

from batcher.log_ration import Ration, rationed
from batcher.types import Array
from server.backends.function_inlining import inlined
from server.backends.graph_names import default_opset, free_prefix, graphs, subgraphs
from server.backends.int_division_nodes import BY_ZERO, OVERFLOW, RESERVED_PREFIX
from server.backends.int_division_rewrite import GuardUnavailable, Scope, has_division, rewrite_graph
from server.backends.int_division_scan import may_divide
from server.errors import ModelRefusedInput

__all__ = [
    "BY_ZERO",
    "OVERFLOW",
    "RESERVED_PREFIX",
    "DivisionGuard",
    "GuardUnavailable",
    "division_guard_for",
]

log = logging.getLogger(__name__)

MIN_OPSET = 7  # Equal/Add broadcasting without attributes (opset 1-6 ask for `broadcast`)
WHERE_OPSET = 9  # Where's first opset; below it the safe divisor is computed with Add
# Where a session made from bytes reads external data files (onnxruntime 1.23 and 1.31 honour it).
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"


@dataclass(frozen=True)
class DivisionGuard:
    """A rewritten model: its bytes, its extra outputs (flags) and, for each, its node and fault."""

    model_bytes: bytes
    flags: tuple[str, ...]  # extra graph outputs, the count of bad divisors a guarded node met
    nodes: tuple[str, ...]  # the guarded node of each flag, as a message names it
    faults: tuple[str, ...]  # what each flag counts: BY_ZERO or OVERFLOW

    def check(
        self, model: str, counts: Sequence[Array], *, log_it: bool = True, ration: Ration | None = None
    ) -> None:
        """Raise ModelRefusedInput when a run's `counts` (the flags' values, in order) say a
        divisor was bad: the run divided by 1 there, and its outputs are not the model's. Its line
        is within `ration` where one is given (a client's zeros are rationed, log_ration.py)."""
        hit: dict[str, list[str]] = {}
        for node, fault, count in zip(self.nodes, self.faults, counts, strict=True):
            if np.asarray(count).any():
                hit.setdefault(fault, []).append(repr(node))
        if not hit:
            return
        where = "; ".join(f"{fault} in node {', '.join(nodes)}" for fault, nodes in hit.items())
        end = rationed(ration) if log_it else None
        if end is not None:  # as run_errors.py logs onnxruntime's refusals: once per batch
            log.warning("model %s: refused a batch's inputs: %s%s", model, where, end)
        raise ModelRefusedInput(f"model '{model}': {where}")


def division_guard_for(
    path: Path,
    model: str,
    runtime_version: str,
    wanted: bool | None = None,
    *,
    model_proto: onnx.ModelProto | None = None,
) -> DivisionGuard | None:
    """The guarded model for `path` (or for `model_proto`, the model at `path` rewritten already)
    unless `wanted` is False (None: on every onnxruntime, as all known trap on MIN / -1), when the
    model has integer divisions to guard; None otherwise, also when it cannot be rewritten (one
    WARNING naming `runtime_version`)."""
    if wanted is False:
        return None
    if not may_divide(path):  # no Div/Mod node: the parse below is skipped (~90 ms for resnet)
        return None
    try:
        proto = model_proto if model_proto is not None else onnx.load(str(path), load_external_data=False)
        return guard_model(proto)
    except Exception as err:  # GuardUnavailable, or onnx cannot read what onnxruntime may
        log.warning(
            "model %s: integer Div/Mod left unguarded (onnxruntime %s ends the process on a zero "
            "divisor or MIN / -1; a request with one will end this server): %s",
            model,
            runtime_version,
            err,
        )
        return None


def guard_model(model: onnx.ModelProto) -> DivisionGuard | None:
    """The guarded form of `model` (see the module's docstring; `model` may be changed too); None
    when nothing needs a guard."""
    if not has_division(model.graph) and not any(_divides(f) for f in model.functions):
        return None
    if any(_divides(f) for f in model.functions):  # their nodes are guarded where they are used
        model = inlined(model)
    graph = model.graph
    opset = _default_opset(model)
    if opset < MIN_OPSET:
        raise GuardUnavailable(
            f"opset {opset} is older than the guard's nodes (opset {MIN_OPSET} or newer is needed)"
        )
    flags = rewrite_graph(
        graph, _inferred(model), Scope(), free_prefix(graph, RESERVED_PREFIX[:-1]), where=opset >= WHERE_OPSET
    )
    if not flags:
        return None
    graph.output.extend(helper.make_tensor_value_info(f.name, TensorProto.INT64, []) for f in flags)
    return DivisionGuard(
        model.SerializeToString(),
        tuple(f.name for f in flags),
        tuple(f.node for f in flags),
        tuple(f.fault for f in flags),
    )


def session_source(
    guard: DivisionGuard | None, path: Path, options: ort.SessionOptions, rewritten: bytes | None = None
) -> str | bytes:
    """What a session of the model at `path` is made from: the file, or the guarded model's bytes
    (else `rewritten`, the model otherwise rewritten), whose external data files (if any)
    `options` then has onnxruntime read beside `path`."""
    source = guard.model_bytes if guard is not None else rewritten
    if source is None:
        return str(path)
    options.add_session_config_entry(EXTERNAL_DATA_FOLDER, str(path.parent))
    return source


def _divides(function: onnx.FunctionProto) -> bool:
    """A Div or a Mod among the function's nodes, or in an If's, Loop's or Scan's body of one (an
    If's Div inside a function had gone unguarded: INT64_MIN / -1 killed the server; a tester,
    session 58)."""
    bodies = [sub for node in function.node for sub in subgraphs(node)]
    return any(node.op_type in ("Div", "Mod") for node in function.node) or any(map(has_division, bodies))


def _default_opset(model: onnx.ModelProto) -> int:
    """As onnxruntime reads it; 1 without an import (refused as too old)."""
    opset = default_opset(model)
    return 1 if opset is None else opset


def _inferred(model: onnx.ModelProto) -> onnx.GraphProto:
    """The model's graph after onnx's shape inference (typed values), over a copy of the model
    without its top-level weights (each stands as a typed input: types need no values)."""
    source = model.graph
    skeleton = onnx.ModelProto(ir_version=model.ir_version)
    skeleton.opset_import.extend(model.opset_import)
    if all(o.domain != "" for o in model.opset_import):  # "ai.onnx" only: spelt "" below
        skeleton.opset_import.append(helper.make_opsetid("", _default_opset(model)))
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph
    for name in ("node", "input", "output", "value_info"):
        getattr(graph, name).extend(getattr(source, name))
    inputs = {v.name for v in graph.input}
    for init in source.initializer:
        if init.name not in inputs:
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    for function in skeleton.functions:
        _default_domain(function.node)
    for each in graphs(graph):
        _default_domain(each.node)
    return shape_inference.infer_shapes(skeleton).graph


def _default_domain(nodes: Sequence[onnx.NodeProto]) -> None:
    """Spell the default domain "" (onnx's inference knows no "ai.onnx" unless imported by that
    name; onnxruntime takes both), on the skeleton only: the model keeps its spelling."""
    for node in nodes:
        if node.domain == "ai.onnx":
            node.domain = ""
