"""The graph inputs a tensor's values are made from, where a length of an axis that is not the
batch's counts as made from none: a broadcast against the batch's axis and a Concat pinning it
(onnx_broadcast_pairs.py) ask whether an input is made from no batched input ("free", its length
then not the batch's).

The lineage of onnx_mixing_graph.py (`made_from`) follows every input of every maker, a Shape's
too: a Loop run Shape(x)[1] times (4 for x [N, 4]) stacked a [4, 1] table that read as made from
the batch, so x + t, the batch's axis broadcast against t's 4 rows, loaded batched: a batch of four
gave row i t's row i, alone a request got t's row 0 (wrong, OK; a tester, session 58). Here a
tensor whose entries onnx_partial_ints.py knows, each a fixed length or a length named on a graph
input's axis other than the batch's (Shape(x)[1], Shape(x, start=1), their sums), carries neither
rows nor the batch's size, and so does a Size of dims each such a length. An input's unnamed dim
past the first is named before the inference, and a dim onnx made up (`unk__`) counts where an op
made it of such lengths and amounts of no batched input (onnx_told_dims.py: sessions 59, 60), or
where it stands beside the batch's in a tensor carrying the batch at one axis (a Reshape's
[N, 2, unk], a Loop's stack [unk, N]), and so does a SplitToSequence's count of pieces of such a
dim (session 60). A whole Shape, a Gather of its entry 0, a Size of the batch, a dim of a tensor
whose batch onnx renamed or lost, or a length not known still read the batch. A node's bodies are
followed through the values they return (a body input reads as before: its node's inputs are
followed too, so a Loop carrying x is made from x); a body not walked, through what it reads from
outside.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import onnx

from server.backends.graph_names import int_attribute, subgraphs
from server.backends.onnx_mixing_graph import outer_reads
from server.backends.onnx_partial_ints import Dims, Entry, Made, PartialInts
from server.backends.onnx_told_dims import beside_batch, dims_made_apart

MAX_WALK = 4096  # tensors a table's walk reads at most (more: read by its dims)
_NO_DATA = frozenset({"Shape", "Size", "OptionalHasElement"})  # outputs of none of their input's values


class ValueLineage:
    """A tensor -> the graph inputs its values are made from, lengths of other axes than the
    batch's not counted; one for a walk and its bodies' walks (a graph's names are its own)."""

    def __init__(self, made: Callable[[str], frozenset[str]], makers: Mapping[str, onnx.NodeProto]) -> None:
        self._made = made  # the whole lineage: what a tensor no node makes is made from
        self._makers = makers
        self._lineage: dict[str, frozenset[str]] = {}
        self.apart: set[str] = set()  # tensors whose entries are each a length of an axis not the batch's
        self.told: frozenset[str] = frozenset()  # names a graph input declares on an axis not the batch's
        self.made: set[str] = set()  # dims an op made of such lengths (onnx_told_dims.py)

    def declare(self, graph: onnx.GraphProto, batch: Collection[str]) -> None:
        """The main graph's inputs' dim names, but the batch's: lengths a request sets itself."""
        dims = (d for value in graph.input for d in value.type.tensor_type.shape.dim)
        self.told = frozenset(d.dim_param for d in dims if d.HasField("dim_param")) - set(batch)

    def see(
        self,
        node: onnx.NodeProto,
        partial: PartialInts,
        batch: Collection[str],
        dims: Callable[[str], Dims | None],
        batched: Collection[str],
    ) -> None:
        """After `partial` has seen `node`: its outputs made of other axes' lengths only, and its
        dims made of them (onnx_told_dims.py); `batched`: the main graph's inputs carrying the batch."""
        free = lambda name: not set(batched) & self.of(name)  # noqa: E731
        self.made |= dims_made_apart(node, dims, lambda dim: self._apart(dim, batch), free) - set(batch)
        for out in (name for name in node.output if name):
            self.made |= beside_batch(dims(out), batch)
            entries = partial.named(out, None)
            if node.op_type == "Size" and node.input and (shape := dims(node.input[0])) is not None:
                entries = tuple(shape)  # its value is their product
            elif node.op_type == "SequenceLength" and node.input:
                entries = self._split_count(node.input[0], dims, free)
            if entries is not None and all(self._apart(entry, batch) for entry in entries):
                self.apart.add(out)

    def _split_count(
        self, sequence: str, dims: Callable[[str], Dims | None], free: Callable[[str], bool]
    ) -> tuple[Entry, ...] | None:
        """A SplitToSequence's count, as the dim it splits (each of its pieces, or pieces of a size of
        no batched input): len(x.split(1, dim=1)) is x's dim 1 (a tester, session 60)."""
        maker = self._makers.get(sequence)
        if maker is None or maker.op_type != "SplitToSequence" or (shape := dims(maker.input[0])) is None:
            return None
        axis = int_attribute(maker, "axis", 0)
        if not -len(shape) <= axis < len(shape) or not all(free(name) for name in maker.input[1:] if name):
            return None
        return (shape[axis],)  # (split in pieces: not this many, but made of it and sizes of no batch)

    def _apart(self, entry: Entry, batch: Collection[str]) -> bool:
        if isinstance(entry, int):
            return True  # a fixed length, or a constant beside one
        names = {entry} if isinstance(entry, str) else entry.names if isinstance(entry, Made) else {None}
        return all((name in self.told or name in self.made) and name not in batch for name in names)

    def reads(
        self, names: Sequence[str], unknown: Sequence[bool], batched: Collection[str], mixed: Collection[str]
    ) -> list[bool | None]:
        """How a broadcast reads each of `names` (onnx_broadcast_pairs.py): False where it mixes
        already (its reason the better one), else True (by its dims), or None (`_read`)."""
        return [
            name not in mixed and self._read(name, u, batched) for name, u in zip(names, unknown, strict=True)
        ]

    def _read(self, name: str, unknown: bool, batched: Collection[str]) -> bool | None:
        """None where `name`'s shape is `unknown` and its values reach no batched input but through
        a Shape, a Size, a CastLike's type or an OptionalHasElement: a table given an axis at a
        computed place, read as any length (a Range's positions as long as x's columns, unsqueezed
        at computed axes: batched, wrong, OK; testers, session 61). A Loop carrying x, its shape
        unknown too, carries x's rows: True."""
        stack, seen = [name], set[str]()
        while unknown and stack and len(seen) < MAX_WALK:
            top = stack.pop()
            if top in batched:
                return True
            maker = self._makers.get(top)
            if top in seen or maker is None or maker.op_type in _NO_DATA:
                continue  # (a body's input: its node's inputs are followed)
            seen.add(top)
            sources = self._sources(top) or []  # a body's: what it returns (a dead branch's reads not)
            stack.extend(s for s in (sources[:1] if maker.op_type == "CastLike" else sources) if s)
        return None if unknown and not stack else True

    def of(self, name: str) -> frozenset[str]:
        """The graph inputs `name`'s values are made from."""
        stack, open_ = [(name, False)], set[str]()  # open: entered, its sources not all read yet
        while stack:
            top, expanded = stack.pop()
            if top in self._lineage:
                continue
            sources = self._sources(top)
            if sources is None:  # no node makes it: a graph's input, a body's, an initializer
                self._lineage[top] = self._made(top)
            elif not expanded:
                open_.add(top)
                stack.append((top, True))
                stack.extend((s, False) for s in sources if s and s not in self._lineage and s not in open_)
            else:
                open_.discard(top)
                made: frozenset[str] = frozenset()
                for source in (s for s in sources if s):  # one still open (a cycle): its whole lineage
                    made = made | (self._lineage[source] if source in self._lineage else self._made(source))
                self._lineage[top] = made
        return self._lineage[name]

    def _sources(self, name: str) -> list[str] | None:
        """What `name` is made from ([]: nothing; None: no node makes it, its whole lineage)."""
        if name in self.apart:
            return []
        maker = self._makers.get(name)
        if maker is None:
            return None
        bodies = list(subgraphs(maker))
        if not bodies:
            return list(maker.input)
        made = (out for body in bodies for inner in body.node for out in inner.output if out)
        walked = all(out in self._makers for out in made)  # its makers known: its walk is done
        returned = (out.name for body in bodies for out in body.output) if walked else outer_reads(maker)
        return [*maker.input, *returned]
