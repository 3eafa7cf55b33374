"""What the stand-ins of onnx_stand_ins.py are built with: what the probe tells of a tensor before
onnx's inference runs, and a maker that adds one op's stand-in nodes in the form the probe's opset
reads (a Reduce's axes an attribute or an input), each node saying which op it stands for."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from server.backends.graph_names import STANDS_FOR, described, graphs

AXES_AS_INPUT = 18  # ReduceMean's and ReduceMax's axes an input from this opset on
WHERE_OPSET = 9  # ONNX's Where from this opset on
UNSQUEEZE_INPUT = 13  # Unsqueeze's axes an input from this opset on
SMALL = 64  # values of a constant kept (an axis, a pads list)


@dataclass
class Known:
    """What the probe tells of its tensors before inference: element types, dims (of its graph inputs,
    the weights given as inputs, its initializers and Constants) and the values of small constants."""

    types: dict[str, int] = field(default_factory=dict)
    dims: dict[str, list[int | str | None]] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def rank(self, name: str) -> int | None:
        dims = self.dims.get(name)
        return None if dims is None else len(dims)


def known_of(probe: onnx.ModelProto) -> Known:
    known = Known()
    for graph in graphs(probe.graph):
        tensors = [(init.name, init) for init in graph.initializer]
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                tensors += [(node.output[0], found.t) for found in node.attribute if found.name == "value"]
        for name, tensor in tensors:
            known.types[name], known.dims[name] = tensor.data_type, list(tensor.dims)
            if int(np.prod(tensor.dims)) <= SMALL and tensor.data_location != TensorProto.EXTERNAL:
                known.values[name] = numpy_helper.to_array(tensor)
        for value in (*graph.input, *graph.value_info):
            tensor_type = value.type.tensor_type
            if value.type.HasField("tensor_type") and tensor_type.elem_type:
                known.types.setdefault(value.name, tensor_type.elem_type)
                if tensor_type.HasField("shape"):
                    dims = [
                        d.dim_value if d.HasField("dim_value") else d.dim_param or None
                        for d in tensor_type.shape.dim
                    ]
                    known.dims.setdefault(value.name, dims)
    return known


@dataclass
class Maker:
    """Builds one op's stand-in: its nodes, each saying which op it stands for (a message names that
    op: graph_names.described), and the tensors they add."""

    node: onnx.NodeProto
    opset: int
    known: Known
    counter: Iterator[int]
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    # Inputs the op reads by each batch row's place on one axis (an attention mask's rows): the
    # reading checks there that the batch is that axis alone (onnx_foreign_ops.py).
    per_row: list[tuple[str, int, bool]] = field(default_factory=list)

    def add(self, op: str, inputs: Sequence[str], out: str | None = None, **attrs: Any) -> str:
        # A tensor it adds is named after the op's first input, which a message may name.
        first = self.node.input[0] if self.node.input else self.node.op_type
        made = out if out is not None else f"{first}, in the {self.node.op_type} ({next(self.counter)})"
        self.nodes.append(helper.make_node(op, list(inputs), [made], doc_string=self._stands_for(), **attrs))
        return made

    def add_outputs(self, op: str, inputs: Sequence[str], attributes: Sequence[onnx.AttributeProto]) -> None:
        """A node of `op` making the op's outputs as they are, with `attributes` (copied)."""
        node = helper.make_node(op, list(inputs), list(self.node.output), doc_string=self._stands_for())
        node.attribute.extend(attributes)
        self.nodes.append(node)

    def _stands_for(self) -> str:
        return f"{STANDS_FOR}{described(self.node)} ({self.node.domain or 'ai.onnx'})"

    def constant(self, value: TensorProto) -> str:
        return self.add("Constant", [], value=value)

    def ints(self, values: Sequence[int]) -> str:
        return self.constant(helper.make_tensor("ints", TensorProto.INT64, [len(values)], list(values)))

    def reduce(self, op: str, x: str, axes: Sequence[int], out: str | None = None, keepdims: int = 1) -> str:
        """A ReduceMean or ReduceMax over `axes`, in the form the probe's opset reads."""
        if self.opset >= AXES_AS_INPUT:
            return self.add(op, [x, self.ints(axes)], out, keepdims=keepdims)
        return self.add(op, [x], out, axes=list(axes), keepdims=keepdims)

    def unsqueeze(self, x: str, axis: int, out: str | None = None) -> str:
        """`x` with an axis of 1 at `axis`, in the form the probe's opset reads."""
        if self.opset >= UNSQUEEZE_INPUT:
            return self.add("Unsqueeze", [x, self.ints([axis])], out)
        return self.add("Unsqueeze", [x], out, axes=[axis])

    def spread(self, x: str, axes: Sequence[int], out: str | None = None) -> str:
        """`x`'s shape and type, each value made from every value along `axes` (a normalisation)."""
        return self.where(x, self.reduce("ReduceMax", x, axes), out)

    def where(self, x: str, y: str, out: str | None = None) -> str:
        """`x` and `y` broadcast together (of one type), each value made from both (below opset 9,
        which has no Where: x + (y - y))."""
        if self.opset < WHERE_OPSET:
            return self.add("Add", [x, self.add("Sub", [y, y])], out)
        true = self.constant(helper.make_tensor("true", TensorProto.BOOL, [], [True]))
        return self.add("Where", [true, x, y], out)

    def transposed(self, name: str, rank: int) -> str:
        """`name` with its last two axes swapped, named so that a message can say so."""
        made = f"{name}, transposed ({next(self.counter)})"
        return self.add("Transpose", [name], made, perm=[*range(rank - 2), rank - 1, rank - 2])

    def floats(self, names: Sequence[str]) -> list[str]:
        return [self.add("Cast", [name], to=TensorProto.FLOAT) for name in names]

    def scaled(self, normalised: str, scale: str, bias: str) -> None:
        """Output 0: `normalised` times its scale, plus its bias where it has one (a scale a client
        sends carrying the batch on another axis pairs rows: the Mul's broadcast is read)."""
        product = self.add("Mul", [normalised, scale], None if bias else self.output(0))
        if bias:
            self.add("Add", [product, bias], self.output(0))

    def statistic(self, x: str, axes: Sequence[int], out: str) -> None:
        """A normalisation's mean or inverse deviation output: float whatever `x`'s type (its stash)."""
        self.add("Cast", [self.reduce("ReduceMean", x, axes)], out, to=TensorProto.FLOAT)

    def rows_at(self, index: int, axis: int, by_length: bool = False) -> None:
        """The op's input `index`, where it has one, is read by each batch row's place on `axis`
        (`by_length`: a 1-D one is read by its length against the batch's size, an Attention's mask)."""
        name = self.inputs(index)[0]
        if name:
            self.per_row.append((name, axis, by_length))

    def inputs(self, *indices: int) -> list[str]:
        return [self.node.input[i] if i < len(self.node.input) else "" for i in indices]

    def output(self, index: int) -> str | None:
        """The op's output `index` where the graph uses it."""
        return self.node.output[index] if index < len(self.node.output) and self.node.output[index] else None

    def outputs_used(self) -> int:
        """How many of the op's outputs the graph uses, up to the last one it uses."""
        return max((k + 1 for k, name in enumerate(self.node.output) if name), default=0)


def attributes(node: onnx.NodeProto, names: Sequence[str]) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in names}
