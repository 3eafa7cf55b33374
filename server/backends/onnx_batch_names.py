"""The names the batch's axis goes by in a graph, for the reading of ops that mix rows
(onnx_row_mixing.py): the symbols onnx's shape inference gives each input's first dim (the roots),
the symbols of axes a reshape folded the batch into (onnx_reshape_rows.py), and the symbols an op
gave an axis it kept whole where the inference made up a new one.

The inference makes up a new symbol where it cannot tell two sizes are equal: a Tile by 1, a Slice
of the whole axis, an If whose branches each fold the batch, a Loop's carried value. Ops along the
renamed axis had not been read as along the batch (a tester, session 51: a CumSum after an If, a
Softmax after a Tile by 1, loaded batched and answered wrong, OK). The new name is taken for the
old where the op keeps that axis as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import onnx

from server.backends.graph_names import described
from server.backends.onnx_output_shapes import BATCH_SYMBOL
from server.backends.onnx_reshape_rows import (
    Dim,
    Folded,
    Moved,
    Relation,
    dims_product,
    dims_quotient,
    relation,
    reshaped_rows,
    solved_batch_axis,
    spelled_out,
    values_per_row,
)
from server.backends.onnx_told_dims import TOLD_PREFIX

Dims = list[Dim]
MAX_RELATIONS = 256  # the products Reshapes proved equal kept for later reshapes' -1 (a graph's first)
BATCH_PREFIX = BATCH_SYMBOL.split("{")[0]
# Ops whose output keeps each axis of its inputs where that axis is not changed, and whose output
# onnx's inference can name anew (a Tile's, a Slice's; a broadcast of two names): the axis renamed
# is taken as the same (elementwise ops align their inputs from the end). Unary ops keep the names.
_KEEPS_AXES = frozenset(
    {
        "Tile", "Slice", "Pad", "Expand", "Where", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min",
        "Equal", "Less", "Greater", "And", "Or", "Identity", "Dropout", "TopK", "MatMul",
    }
)  # fmt: skip
# (A MatMul's axes before its last two, its stacks of matrices: torch's bmm of [N, T, T] and [N, T, D].)
# Ops whose output's axis k is their inputs' axis k, its length set by their own values (a Tile's
# repeats, a Pad's pads, a Slice's bounds, a Split's or a Concat's parts).
_RESIZES_AXES = frozenset({"Tile", "Pad", "Slice", "Split", "Concat"})


class BatchNames:
    """The batch's symbols in a graph: roots, folds, and names carried through ops."""

    def __init__(self, roots: Collection[str]) -> None:
        self.roots = frozenset(roots)
        self.batch: set[str] = set(roots)  # every symbol an axis carrying the batch goes by
        self.folds: dict[str, Dims] = {}  # a symbol -> the dims folded into it (the batch among them)
        self.origins: dict[str, str] = {}  # a fold's symbol -> the reshape that made it
        self.grown: set[str] = set()  # names onnx made up for lengths computed from the batch's (`grew`)
        self.partly: set[str] = set()  # axes only some of an If's branches give the batch (`adopt`)
        self.products: dict[str, Dims] = {}  # a Reshape's dim of no batch -> the dims it is the product of
        self.relations: list[Relation] = []  # products Reshapes proved equal (onnx_reshape_rows.relation)
        self.checked: set[str] = set()  # Reshapes onnxruntime runs and checks (onnx_dim_terms.py)
        self.sources: dict[str, Dims] = {}  # a Reshape it fuses with the next -> the first's input dims

    def within(self) -> BatchNames:
        """A copy for a subgraph: it reads the enclosing graph's names, its own stay its own."""
        inner = BatchNames(self.roots)
        inner.batch, inner.folds, inner.origins = set(self.batch), dict(self.folds), dict(self.origins)
        inner.grown, inner.partly = set(self.grown), set(self.partly)
        inner.products, inner.relations = dict(self.products), list(self.relations)
        inner.checked, inner.sources = set(self.checked), dict(self.sources)
        return inner

    def fold(self, found: Folded, node: onnx.NodeProto) -> None:
        self.batch.add(found.symbol)
        self.folds[found.symbol] = list(found.dims)
        self.origins[found.symbol] = described(node)

    def same(self, old: Dim, new: Dim) -> None:
        """`new` names the axis `old` named: a batch's axis stays one."""
        if isinstance(old, str) and isinstance(new, str) and old in self.batch and new not in self.batch:
            self.batch.add(new)
            self.folds[new] = self.folds.get(old, [old])
            if old in self.partly:
                self.partly.add(new)
            if old in self.origins:
                self.origins[new] = self.origins[old]

    def renamed(self, had: Sequence[Dim] | None, refined: Sequence[Dim]) -> None:
        """A tensor's dims onnx named `had`, worked out as `refined`: a name onnx made up (`unk__`)
        for an axis refined as the batch's is the batch's wherever onnx kept it (a Resize's, then
        a Conv's: read as another length, an FPN's merge; a tester, session 60)."""
        if had is not None and len(had) == len(refined):
            for old, new in zip(had, refined, strict=True):
                if isinstance(old, str) and old.startswith("unk__"):
                    self.same(new, old)

    def grew(self, node: onnx.NodeProto, dims: Callable[[str], Dims | None]) -> None:
        """An axis of `node`'s outputs that onnx named anew (`unk__`) where an input has the batch's
        axis: its length is computed from the batch's size (2N of Tile(x, [2, 1]), N - 1 of x[1:], N
        of x[0:]), so a Shape's entry for it is too (x / Shape(Tile(x, [2, 1]))[0] had loaded
        batched; a tester, session 62)."""
        if node.op_type not in _RESIZES_AXES:
            return
        given = [dims(name) for name in (node.input if node.op_type == "Concat" else node.input[:1]) if name]
        for made in node.output:
            out = dims(made) if made else None
            for had in given:
                if out is None or had is None or len(had) != len(out):
                    continue
                for old, new in zip(had, out, strict=True):
                    if old in self.batch and isinstance(new, str) and new.startswith("unk__"):
                        self.grown.add(new)

    def mark(self, dim: Dim) -> None:
        """`dim` names the batch's own axis (the rows of an own-row pick)."""
        if self.roots and isinstance(dim, str):
            self.same(min(self.roots), dim)

    def carry(
        self,
        node: onnx.NodeProto,
        dims: Callable[[str], Dims | None],
        mixed: bool = False,
        counted: Collection[str] = (),
    ) -> None:
        """After `node` (read as keeping rows), the batch's axes of its inputs under the names its
        outputs give them: by axis from the end for the ops that keep axes. After a `node` read as
        mixing rows, each axis of its outputs onnx named anew is taken as made from the batch's size:
        a Shape's entry for it read as a value (x / Shape(ConcatFromSequence(SplitToSequence(x,
        keepdims=0), axis=1, new_axis=1))[1], N) had loaded batched, only its values read as mixed.
        Not those `counted` (a NonMaxSuppression's count: its own message, onnx_mixing_graph.py)."""
        if mixed:  # the names it made, not those its inputs had (a Compress's width through a CumSum)
            had = {d for name in node.input if name for d in dims(name) or []}
            for made in node.output:
                new = [d for d in dims(made) or [] if isinstance(d, str) and d.startswith("unk__")]
                self.grown.update(d for d in new if d not in counted and d not in had)
            return
        if node.op_type not in _KEEPS_AXES:
            return
        for made in node.output[:1] if node.op_type != "TopK" else node.output:  # values, indices
            out = dims(made) if made else None
            if out is None:
                continue
            for name in node.input[:1] if node.op_type == "TopK" else node.input:
                given = dims(name) if name else None
                if given is None or len(given) > len(out):
                    continue
                for offset in range(1 if node.op_type != "MatMul" else 3, len(given) + 1):
                    if given[-offset] != 1:  # a broadcast axis of 1 names nothing
                        self.same(given[-offset], out[-offset])

    def adopt(self, returned: Sequence[tuple[BatchNames, Dims | None]], made: Dims | None) -> None:
        """The values subgraphs return (each read with its own names) become the node's output
        `made`: axis by axis from the end (a Loop's scan output has an axis of turns ahead), where
        every subgraph returns the batch there. An axis onnx named anew where only some of an If's
        branches have the batch (If(c, x[:, None], x[None])'s [unk, unk, 3]) is taken as the batch's
        too: an op along it mixes, a Shape's entry for it is its size (a tester, session 65)."""
        if made is None or not returned:
            return
        for offset in range(1, len(made) + 1):
            new = made[-offset]
            olds = [
                (inner, dims[-offset]) for inner, dims in returned if dims is not None and offset <= len(dims)
            ]
            batched = [isinstance(old, str) and old in inner.batch for inner, old in olds]
            # Carried where every branch has the batch's size itself there: an inner If's axis only
            # some of its branches give the batch is such an axis here too (a tester, session 66).
            whole = [isinstance(old, str) and old in inner.whole for inner, old in olds]
            carried = len(olds) == len(returned) and all(whole)
            if not carried and any(batched) and isinstance(new, str) and new.startswith("unk__"):
                self.batch.add(new)  # (some branches only: its length is made from the batch's, `whole`)
                self.partly.add(new)
            if carried and isinstance(new, str) and new not in self.batch:
                inner, old = olds[0]
                self.batch.add(new)
                self.folds[new] = inner.spelled([old])
                if isinstance(old, str) and old in inner.origins:
                    self.origins[new] = inner.origins[old]

    @property
    def whole(self) -> set[str]:
        """The names of axes whose length is the batch's size itself: not those only some of an
        If's branches give the batch (If(c, x, x.T)'s first axis is N or 4; x.view(t.size(0), -1)
        by it had loaded batched and pairs rows for c False; a tester, session 66)."""
        return self.batch - self.partly

    def itself(self, dim: Dim) -> bool:
        """Whether `dim` is the batch's size itself under some name (not a fold, not partly)."""
        return isinstance(dim, str) and dim in self.whole and self.row_size(dim) == 1

    @property
    def made(self) -> set[str]:
        """The names of lengths made from the batch's size, not the size itself (`grew`, `adopt`)."""
        return self.grown | self.partly

    def folded_rows(self, dims: Sequence[Dim] | None) -> str | None:
        """Why a graph output of `dims` has rows that are not the requests' rows: its first axis is
        the batch folded with other values ([N*T, C]), so no request's share of it is its row count."""
        if not dims or not isinstance(dims[0], str) or dims[0] not in self.folds:
            return None
        if self.row_size(dims[0]) == 1:
            return None  # the batch itself under another name
        return (
            f"its first axis {self.shown(dims[:1])} is the batch's axis folded with other values"
            f"{self.note(dims[0])}: a request's share of it is not its rows"
        )

    def row_size(self, dim: Dim) -> Dim:
        return values_per_row(dim, self.roots, self.folds)

    def spelled(self, dims: Sequence[Dim]) -> Dims:
        return spelled_out(dims, self.folds)

    def factored(self, dims: Sequence[Dim]) -> Dims:
        """`dims` with folds and the products Reshapes made of other dims spelled out: for the
        arithmetic on lengths (a Swin's windows of a batch, N * hq * wq, over its mask's, hq * wq)."""
        return spelled_out(dims, {**self.products, **self.folds})

    def _product(self, before: Sequence[Dim], after: Sequence[Dim]) -> None:
        """A reshape of no batch's one output dim its input does not name, where it is a product of
        the input's dims over the others ([1, hq, wq, 4, 4, 1] -> [?, 4, 4, 1]: ? = hq * wq)."""
        if any(dim in self.batch for dim in self.spelled(before)):
            return
        unknown = [d for d in after if not isinstance(d, int) and (d is None or d not in before)]
        if len(unknown) != 1 or not isinstance(unknown[0], str) or unknown[0] in self.products:
            return
        whole = dims_product(before)
        rest = dims_product([d for d in after if d != unknown[0]])
        made = dims_quotient(whole, rest) if whole is not None and rest is not None else None
        several = made is not None and (len(made) > 2 or (len(made) == 2 and made[0] != 1))
        if several and made is not None and not any(d in self.batch for d in made):
            self.products[unknown[0]] = list(made)

    def twice(self, dims: Sequence[Dim] | None) -> str | None:
        """Why a tensor's rows are not its own: the batch on two axes (zeros(N, N); a tester, s52)."""
        if sum(dim in self.batch for dim in dims or []) < 2:
            return None
        return f"it carries the batch on two axes {self.shown(dims or [])}: each row is as long as the batch"

    def shown(self, dims: Sequence[Dim]) -> list[int | str | None]:
        """`dims` as a config's reader knows them: the probe's own name of an unnamed dim is
        'batch', a fold is written as the product it is ('batch*4')."""
        return [self._shown(dim) for dim in dims]

    def note(self, dim: Dim) -> str:
        """Where a fold came from, for a message about an op along it."""
        if not isinstance(dim, str) or dim not in self.origins:
            return ""
        return f" (the batch's axis folded into it by {self.origins[dim]})"

    def _shown(self, dim: Dim) -> int | str | None:
        if isinstance(dim, str) and dim in self.folds and dim not in self.roots:
            parts = [self._shown(d) for d in self.spelled([dim]) if d != 1]
            return "*".join(str(part) for part in parts)
        if isinstance(dim, str) and dim.startswith(BATCH_PREFIX):
            return "batch"
        return None if isinstance(dim, str) and dim.startswith(TOLD_PREFIX) else dim  # (unnamed)

    def reshaped(
        self,
        node: onnx.NodeProto,
        before: Sequence[Dim] | None,
        after: Sequence[Dim] | None,
        multiple: Folded | None = None,
    ) -> str | None:
        """Why a reshape moves values between the batch's rows (onnx_reshape_rows.py); one that
        folds the batch into an axis makes that axis the batch's for the ops after it. One that
        onnxruntime runs and checks (`checked`) proves products equal (of the batch's data only)
        for later reshapes. `multiple`: the fold its shape's first entry, N * K, makes
        (onnx_batch_multiples.py), taken where the reading finds nothing else."""
        if before is None or after is None:
            return None
        found = reshaped_rows(before, after, self.roots, self.folds, self.relations)
        found = multiple if found is None and multiple is not None else found
        # What it proves is of the first input of the Reshapes onnxruntime fuses with it.
        source = self.sources.get(node.input[0], list(before)) if node.input else list(before)
        checked = bool(node.output) and node.output[0] in self.checked
        if not checked and node.output:
            self.sources[node.output[0]] = source
        if checked and any(dim in self.batch for dim in self.spelled(source)):
            proved = relation(self.spelled(source), self.spelled(after))
            if proved is not None and proved not in self.relations and len(self.relations) < MAX_RELATIONS:
                self.relations.append(proved)
        if isinstance(found, Folded):
            self.fold(found, node)
        elif found is None:
            if checked:
                self._product(source, after)
            axis = solved_batch_axis(before, after, self.roots, self.folds, self.relations)
            if axis is not None:
                self.mark(after[axis])
        if not isinstance(found, Moved):
            return None
        source, target = self.shown(self.spelled(before)), self.shown(after)
        where = (
            f"the batch's rows spread over its output's axes {found.behind}"
            if found.target is None
            else f"the batch's axis {found.source} with {found.ahead} ahead of it becoming axis "
            f"{found.target} with {found.behind} ahead of it"
        )
        return (
            f"{described(node)} moves values between the batch's rows: it reshapes '{node.input[0]}' "
            f"{source} to {target}, {where}"
        )
