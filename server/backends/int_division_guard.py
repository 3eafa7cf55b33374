"""Integer Div and Mod guarded against a zero divisor, for onnxruntime builds that trap on one.

onnxruntime before 1.31 (1.23.2 is the newest for Python 3.10) divides integers with x86 `idiv`,
which raises SIGFPE on a zero divisor: the whole server process ends, and every request in flight
with it (onnxruntime issue #27686). A signal cannot be caught and resumed from Python, so a zero must
never reach such a Div or Mod. On those builds a model's top-level integer Div/Mod nodes are
rewritten at load, divisor `B` -> `Where(Equal(B, 0), 1, B)`, and each guarded node gets one extra
graph output, the count of zeros its divisor held (`ReduceSum(Cast(Equal(B, 0), INT64))`: a sum is
0 over an empty tensor, where ReduceMax's value differs between onnxruntime versions). The backend
fetches those counts with every run, never shows or sends them, and fails a batch whose count is
not 0 as onnxruntime 1.31 does, with the inputs' fault (INVALID_ARGUMENT).

Left alone: a divisor that is a constant with no zero, float types, nodes inside subgraphs (If,
Loop, Scan bodies). A model this cannot rewrite (external data, an opset without Where, a divisor
type shape inference cannot tell) loads unguarded, with one WARNING line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper, shape_inference

from batcher.types import Array
from server.errors import ModelRefusedInput

log = logging.getLogger(__name__)

FIRST_RAISING = (1, 31)  # the first onnxruntime known to raise "Integer division by zero" instead
RESERVED_PREFIX = "__sluiceway_int_division_guard__/"  # names of the nodes and outputs added here
MIN_OPSET = 9  # Where's first opset
_DIVISIONS = ("Div", "Mod")
_INTEGERS = frozenset(
    {
        TensorProto.INT8,
        TensorProto.UINT8,
        TensorProto.INT16,
        TensorProto.UINT16,
        TensorProto.INT32,
        TensorProto.UINT32,
        TensorProto.INT64,
        TensorProto.UINT64,
    }
)
# Types Equal (opset 7) and Where (onnxruntime 1.23's kernels) take as they are; the others are
# compared and replaced in INT64 and cast back.
_DIRECT = frozenset({TensorProto.INT32, TensorProto.INT64})


class GuardUnavailable(Exception):
    """The model's integer divisions cannot be guarded; the message says why."""


def runtime_traps(version: str) -> bool:
    """Whether onnxruntime `version` ends the process on an integer division by zero: every
    version before FIRST_RAISING, and one whose number cannot be read (the safe side)."""
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return True
    return (major, minor) < FIRST_RAISING


@dataclass(frozen=True)
class DivisionGuard:
    """A rewritten model: its bytes, its extra outputs (one per guarded node) and those nodes."""

    model_bytes: bytes
    flags: tuple[str, ...]  # extra graph outputs, the count of zeros in each guarded divisor
    nodes: tuple[str, ...]  # the guarded node of each flag, as a message names it

    def check(self, model: str, counts: Sequence[Array], *, log_it: bool = True) -> None:
        """Raise ModelRefusedInput when a run's `counts` (the flags' values, in order) say a
        divisor held a zero: the run divided by 1 there, and its outputs are not the model's."""
        hit = [node for node, count in zip(self.nodes, counts, strict=True) if np.asarray(count).any()]
        if not hit:
            return
        where = f"integer division by zero in node {', '.join(repr(n) for n in hit)}"
        if log_it:  # as run_errors.py logs onnxruntime's refusals: once per batch
            log.warning("model %s: refused a batch's inputs: %s", model, where)
        raise ModelRefusedInput(f"model '{model}': {where}")


def division_guard_for(
    path: Path, model: str, runtime_version: str, wanted: bool | None = None
) -> DivisionGuard | None:
    """The guarded model for `path` when `wanted` (None: when onnxruntime `runtime_version` traps)
    and the model has integer divisions to guard; None otherwise, also when it cannot be rewritten
    (one WARNING)."""
    if not (runtime_traps(runtime_version) if wanted is None else wanted):
        return None
    try:
        proto = onnx.load(str(path), load_external_data=False)
        return guard_model(proto)
    except Exception as err:  # GuardUnavailable, or onnx cannot read what onnxruntime may
        log.warning(
            "model %s: integer Div/Mod left unguarded (onnxruntime %s ends the process on a zero "
            "divisor; a request with one will end this server): %s",
            model,
            runtime_version,
            err,
        )
        return None


def guard_model(model: onnx.ModelProto) -> DivisionGuard | None:
    """Rewrite `model` in place (see the module's docstring); None when nothing needs a guard."""
    graph = model.graph
    candidates = [i for i, node in enumerate(graph.node) if _is_division(node)]
    if not candidates:
        return None
    constants = _constant_divisors(graph)
    types = _value_types(model)
    targets: list[tuple[int, int]] = []  # (node index, element type)
    for index in candidates:
        node = graph.node[index]
        elem = next((types[n] for n in (*node.input[:2], node.output[0]) if n in types), None)
        if elem is None:
            raise GuardUnavailable(f"the type of node {_label(node, index)!r} is not known")
        if elem in _INTEGERS and not _nonzero_constant(constants.get(node.input[1])):
            targets.append((index, elem))
    if not targets:
        return None
    if any(initializer.data_location == TensorProto.EXTERNAL for initializer in graph.initializer):
        raise GuardUnavailable("its weights are in external data files")
    opset = _default_opset(model)
    if opset < MIN_OPSET:
        raise GuardUnavailable(f"opset {opset} has no Where (opset {MIN_OPSET} or newer is needed)")
    if any(name.startswith(RESERVED_PREFIX) for name in _names(graph)):
        raise GuardUnavailable(f"it already names values '{RESERVED_PREFIX}...'")
    return _rewrite(model, targets)


def _rewrite(model: onnx.ModelProto, targets: Sequence[tuple[int, int]]) -> DivisionGuard:
    graph = model.graph
    guards: dict[int, list[onnx.NodeProto]] = {}
    flags: list[str] = []
    labels: list[str] = []
    for index, elem in targets:
        node = graph.node[index]
        prefix = f"{RESERVED_PREFIX}{index}/"
        nodes, safe, flag = _guard_nodes(prefix, node.input[1], elem)
        guards[index] = nodes
        node.input[1] = safe
        graph.output.append(helper.make_tensor_value_info(flag, TensorProto.INT64, []))
        flags.append(flag)
        labels.append(_label(node, index))
    ordered: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):  # each guard right before its node: still topological
        ordered.extend(guards.get(index, ()))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    return DivisionGuard(model.SerializeToString(), tuple(flags), tuple(labels))


def _guard_nodes(prefix: str, divisor: str, elem: int) -> tuple[list[onnx.NodeProto], str, str]:
    """The nodes computing a safe divisor and the zero count from `divisor` (of type `elem`), the
    safe divisor's name and the count's."""
    nodes: list[onnx.NodeProto] = []
    work, work_type = divisor, elem
    if elem not in _DIRECT:
        work, work_type = prefix + "wide", TensorProto.INT64
        nodes.append(helper.make_node("Cast", [divisor], [work], to=TensorProto.INT64))
    zero, one, is_zero = prefix + "zero", prefix + "one", prefix + "is_zero"
    safe = prefix + "safe"
    replaced = safe if elem in _DIRECT else prefix + "safe_wide"
    flag = prefix + "zero_divisors"
    nodes += [
        helper.make_node("Constant", [], [zero], value=helper.make_tensor(zero, work_type, [], [0])),
        helper.make_node("Constant", [], [one], value=helper.make_tensor(one, work_type, [], [1])),
        helper.make_node("Equal", [work, zero], [is_zero]),
        helper.make_node("Where", [is_zero, one, work], [replaced]),
    ]
    if elem not in _DIRECT:
        nodes.append(helper.make_node("Cast", [replaced], [safe], to=elem))
    counted = prefix + "zeros"
    nodes += [
        helper.make_node("Cast", [is_zero], [counted], to=TensorProto.INT64),
        # No axes (attribute before opset 13, input since): every axis, in both forms.
        helper.make_node("ReduceSum", [counted], [flag], keepdims=0),
    ]
    for position, guard in enumerate(nodes):
        guard.name = f"{prefix}{position}"
    return nodes, safe, flag


def _is_division(node: onnx.NodeProto) -> bool:
    return node.op_type in _DIVISIONS and node.domain in ("", "ai.onnx") and len(node.input) >= 2


def _label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type} (unnamed, node {index} of the graph)"


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _names(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    names.update(init.name for init in graph.initializer)
    for node in graph.node:
        names.update(node.output)
        names.add(node.name)
    return names


def _constant_divisors(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto | onnx.AttributeProto]:
    """Values fixed at load: initializers no graph input overrides, and Constant nodes' values."""
    inputs = {v.name for v in graph.input}
    constants: dict[str, onnx.TensorProto | onnx.AttributeProto] = {
        init.name: init for init in graph.initializer if init.name not in inputs
    }
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.attribute:
            constants[node.output[0]] = node.attribute[0]
    return constants


def _nonzero_constant(value: onnx.TensorProto | onnx.AttributeProto | None) -> bool:
    """Whether a constant divisor is known to hold no zero (external or odd forms: not known)."""
    if value is None:
        return False
    if isinstance(value, onnx.AttributeProto):
        if value.name == "value_int":
            return value.i != 0
        if value.name == "value_ints":
            return all(v != 0 for v in value.ints)
        if value.name != "value":
            return False
        value = value.t
    if external_data_helper.uses_external_data(value):
        return False
    return bool(np.all(numpy_helper.to_array(value) != 0))


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types of the graph's values, by onnx's shape inference over a copy of the model
    without its weights (each initializer stands as a typed input: types need no values)."""
    source = model.graph
    skeleton = onnx.ModelProto(ir_version=model.ir_version)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph
    for field in ("node", "input", "output", "value_info"):
        getattr(graph, field).extend(getattr(source, field))
    inputs = {v.name for v in graph.input}
    for init in source.initializer:
        if init.name not in inputs:
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    inferred = shape_inference.infer_shapes(skeleton).graph
    types: dict[str, int] = {}
    for value in (*inferred.input, *inferred.value_info, *inferred.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for node in inferred.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            types.setdefault(node.output[0], node.attribute[0].t.data_type)
    return types
