"""How the row-mixing reading (onnx_row_mixing.py) reads the ops no stand-in replaced
(onnx_stand_ins.py): ops of other domains, and ONNX ops at an opset before ONNX defines them.

Such an op on the batch's path is taken as mixing: the load cannot tell which axes it mixes along
(before session 56 it was taken as row-wise, and com.microsoft's Unique over the batch loaded
batched, each request given indices into its batch mates' values). ai.onnx.ml's ops are the exception:
ONNX defines them, and each reads its input as samples along its first axis (a 1-D input as one
sample), or element by element. A tensor such an op makes whose shape onnx cannot infer is opaque,
and so is what is made from it without a shape: an op after it that works along axes cannot be read
there, and is taken as mixing.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence

import onnx

from server.backends.graph_names import ONNX_DOMAIN, described
from server.backends.onnx_batch_names import BatchNames
from server.backends.onnx_mixing_ops import ROW_WISE_OPS, unknown_op
from server.backends.onnx_stand_ins import StandIns

ML = "ai.onnx.ml"
# ai.onnx.ml ops that read their input as [samples, features]: per row where the batch is its first
# axis of two or more, and only there (ArrayFeatureExtractor's indices must not carry it).
ML_PER_SAMPLE = frozenset(
    {
        "LinearClassifier", "LinearRegressor", "SVMClassifier", "SVMRegressor", "TreeEnsembleClassifier",
        "TreeEnsembleRegressor", "TreeEnsemble", "Normalizer", "Scaler", "Imputer", "ZipMap",
        "FeatureVectorizer", "ArrayFeatureExtractor", "DictVectorizer", "CastMap",
    }
)  # fmt: skip
ML_ELEMENTWISE = frozenset({"Binarizer", "LabelEncoder", "CategoryMapper", "OneHotEncoder"})
Dims = Sequence[int | str | None]


def foreign(node: onnx.NodeProto, opset: int) -> bool:
    """An op outside ONNX's domain, or one ONNX defines only from a later opset than the model's
    (onnxruntime runs some so: LayerNormalization below 17). One this onnx does not know at all is
    onnx_mixing_ops.unknown_op's."""
    if node.domain not in ONNX_DOMAIN:
        return True
    return bool(opset) and onnx.defs.has(node.op_type, "") and not onnx.defs.has(node.op_type, opset, "")


class ForeignOps:
    """What the reading knows of the foreign ops it has passed: the tensors whose shapes are opaque,
    and those of them that are an ai.onnx.ml op's rows (its samples, the batch's first axis)."""

    def __init__(
        self,
        opset: int,
        names: BatchNames,
        shapes: Callable[[str], Dims | None],
        constants: Container[str],
        lineage: Callable[[str], frozenset[str]],
    ) -> None:
        self.opset = opset
        self.names = names  # the batch's symbols (onnx_batch_names.py)
        self.batch = names.batch
        self.shapes, self.constants, self.lineage = shapes, constants, lineage  # the walk's
        self.batched: set[str] = set()  # the graph inputs that carry the batch
        self.opaque: set[str] = set()
        self.ml_rows: set[str] = set()
        self.stand_ins = StandIns()  # what the stand-ins do not read, and read by rows

    def within(
        self, names: BatchNames, shapes: Callable[[str], Dims | None], constants: Container[str]
    ) -> ForeignOps:
        """The same record, read by a body's walk (its tensors' shapes are its own; its lineage is
        the enclosing walk's, which it shares)."""
        inner = ForeignOps(self.opset, names, shapes, constants, self.lineage)
        inner.batched, inner.opaque, inner.ml_rows = self.batched, self.opaque, self.ml_rows
        inner.stand_ins = self.stand_ins
        return inner

    def enter(self, graph: onnx.GraphProto) -> None:
        """A graph's inputs that carry the batch (a body's: those its node feeds it)."""
        for value in graph.input:
            if any(dim in self.batch for dim in self.shapes(value.name) or []):
                self.batched.add(value.name)

    def carries(self, name: str) -> bool:
        """Whether a tensor is on the batch's path: its shape names the batch, or it is made from an
        input that carries it (or from a body's input, its shape unknown)."""
        dims = self.shapes(name)
        if dims is not None and any(dim in self.batch for dim in dims):
            return True
        if name in self.constants:
            return False
        made = self.lineage(name)
        return bool(made & self.batched) or (dims is None and bool(made))

    def mixes(self, node: onnx.NodeProto) -> str | None:
        """Why a foreign op mixes rows: on the batch's path, unread (an ai.onnx.ml op: its rule)."""
        if node.domain == ML and node.op_type in ML_ELEMENTWISE:
            return None
        if node.domain == ML and node.op_type in ML_PER_SAMPLE:
            return self._samples(node)
        for name in node.input:
            if name and self.carries(name):
                what = (
                    f"an op of domain '{node.domain}'"
                    if node.domain not in ONNX_DOMAIN
                    else f"not an ONNX op at opset {self.opset} (onnxruntime's own)"
                )
                return (
                    f"{described(node)} is {what} that the load does not read, on '{name}', made from "
                    "the batch: its rows are taken as mixed"
                )
        return None

    def unknown(self, node: onnx.NodeProto, where: Callable[[int, int], str]) -> str | None:
        """Why a standard op not known here (onnx_mixing_ops.unknown_op) is taken as mixing: on an
        input that carries the batch, no proof of rows (`where(index, axis)` names an axis)."""
        if not unknown_op(node.op_type):
            return None
        for index, name in enumerate(node.input):
            if any(dim in self.batch for dim in self.shapes(name) or []):
                return (
                    f"{described(node)} is an op the load does not know to keep rows apart, on "
                    f"{where(index, 0)}: its rows are taken as mixed"
                )
        return None

    def unread_mixing(
        self, node: onnx.NodeProto, mixed: Mapping[str, str], sized: Callable[[str], str | None]
    ) -> str | None:
        """Why an input of the op a stand-in stands for, not read by it (onnx_stand_ins.py), mixes
        its outputs all the same: its rows mixed, or its values made from the batch's size (a scale
        `N * 0.05` had batched through six stand-ins, every answer wrong, OK; a tester, s56)."""
        for name in (name for out in node.output for name in self.stand_ins.reads.get(out, ())):
            if name in mixed:
                return mixed[name]
            if (why := sized(name)) is not None:
                return f"{described(node)} reads '{name}': {why}"
        return None

    def unread(self, node: onnx.NodeProto, mixed: Container[str]) -> str | None:
        """Why a standard op is taken as mixing for what the reading cannot read: a stand-in's input
        read by rows whose batch is not that axis alone, or an input made from the batch whose shape
        is opaque (after a foreign op) where the op is not elementwise on one input (an input
        already `mixed` says why itself)."""
        for out in node.output:
            for name, axis, by_length in self.stand_ins.rows.get(out, ()):
                why = self._rows_apart(node, name, axis, by_length)
                if why is not None:
                    return why
        if node.op_type in ROW_WISE_OPS:
            return None
        for name in node.input:
            if name in self.opaque and name not in mixed and self.carries(name):
                return (
                    f"{described(node)} reads '{name}', whose shape onnx cannot infer (it is made by "
                    "an op of another domain): the load cannot tell its axes, its rows are taken as mixed"
                )
        return None

    def see(self, node: onnx.NodeProto, why: str | None) -> None:
        """After a node: its shapeless outputs opaque where it is foreign or reads an opaque input."""
        made_opaque = (
            foreign(node, self.opset) or unknown_op(node.op_type) or self.opaque.intersection(node.input)
        )
        rows = why is None and node.domain == ML and node.op_type in ML_PER_SAMPLE
        for out in node.output:
            if out and self.shapes(out) is None and made_opaque:
                self.opaque.add(out)
                if rows:
                    self.ml_rows.add(out)

    def _rows_apart(self, node: onnx.NodeProto, name: str, axis: int, by_length: bool) -> str | None:
        """Why `name`, read by the op by each batch row's place on `axis`, does not hold each row
        there: the batch on another axis too, or folded with other values (an Attention's mask of
        [2B], ends then starts, made by flattening [B, 2]: each row read another's), or a 1-D one read
        by its length that does not carry the batch (a constant [end, start] is every row's end in a
        batch of two); testers, s56. One of no batch axis, its first dim 1, is each row's alike."""
        dims = self.shapes(name)
        carries = self.carries(name)
        if dims is None:
            if not carries and not by_length:
                return None
        elif not any(dim in self.batch for dim in dims):
            if not (by_length and len(dims) == 1):
                return None  # broadcast to every row ([1, S] position ids, [1, heads, S, T] bias)
        elif -len(dims) <= axis < len(dims):
            at = [k for k, dim in enumerate(dims) if dim in self.batch]
            if at == [axis % len(dims)] and self.names.row_size(dims[axis]) == 1:
                return None
        shown = "" if dims is None else f" {self.names.shown(dims)}"
        return (
            f"{described(node)} reads '{name}'{shown} by each batch row's place on its axis {axis}, "
            "and that axis is not the batch's alone: its rows are taken as mixed"
        )

    def _samples(self, node: onnx.NodeProto) -> str | None:
        checked = node.input[:1] if node.op_type == "ArrayFeatureExtractor" else node.input
        for name in node.input:
            if name and name not in checked and self.carries(name):
                return (
                    f"{described(node)} picks each row's features at positions '{name}', made from the "
                    "batch: its rows are taken as mixed"
                )
        for name in checked:
            if not name or not self.carries(name) or name in self.ml_rows:
                continue
            dims = self.shapes(name)
            if dims is None:
                return f"{described(node)} reads '{name}' as samples, and onnx cannot infer its shape"
            at = [axis for axis, dim in enumerate(dims) if dim in self.batch]
            if len(dims) < 2 or at != [0]:
                return (
                    f"{described(node)} reads '{name}' {list(dims)} as samples along its first axis of two "
                    "or more, and the batch is not that axis alone: its rows are taken as mixed"
                )
        return None
