"""A MaxPool's Indices: flat positions over its whole input, so over the whole batch.

ONNX's MaxPool returns, beside the pooled values, where each came from as one index into its input
flattened: row r's indices start at r * C * H * W, their place in the batch. Returned to clients,
they are not a request's own (a tester, session 55: [37, 39, 45, 47] beside three batch mates,
[5, 7, 13, 15] alone, OK), and a MaxUnpool reading indices a client sends puts each value in the
row the index names. Two uses keep rows apart, and are followed here (onnx_row_mixing.py asks):
- a MaxUnpool reading a MaxPool's indices over the same batch puts each value back in its own row;
- a difference of two such indices over the same input cancels the row's start: torch's export of
  `return_indices=True` subtracts each plane's first index, read from a kernel-1 MaxPool.
"""

from __future__ import annotations

import onnx

from server.backends.graph_names import described

_CARRIED = frozenset({"Identity", "Cast", "Slice", "Squeeze", "Unsqueeze"})  # values kept as they are
WATCHED = _CARRIED | {"MaxPool"}  # the ops `see` reads: the others' outputs hold no positions


class PoolIndices:
    """The tensors that hold a MaxPool's flat positions, each by the input it pooled, and why they
    mix rows (their only reason: one mixed for another, a Slice along the batch, is not followed)."""

    def __init__(self) -> None:
        self._pooled: dict[str, tuple[str, str]] = {}  # tensor -> (the MaxPool input, why it mixes)

    def within(self) -> PoolIndices:
        inner = PoolIndices()
        inner._pooled = dict(self._pooled)
        return inner

    def see(self, node: onnx.NodeProto, batched: bool, why: str | None, others: bool) -> dict[str, str]:
        """The node's outputs that hold flat positions over a batch, with why they mix rows;
        `batched`: its first input carries the batch; `why`: why its outputs mix (None: they do
        not); `others`: an input besides its first mixes rows (a Slice's computed bounds).
        A value moved by a Slice that mixes on its own (i[0:1], a flip along the batch) is not
        followed: a tester, session 55, had i - i[::-1] batched, wrong, OK."""
        if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1] and batched and why is None:
            flat = (
                f"{described(node)} returns in '{node.output[1]}' positions counted over the whole batch "
                "(each row's from its place in it)"
            )
            self._pooled[node.output[1]] = (node.input[0], flat)
            return {node.output[1]: flat}
        pooled = self._pooled.get(node.input[0]) if node.op_type in _CARRIED and node.input else None
        if pooled is not None and why == pooled[1] and not others:  # mixed for its positions alone
            self._pooled[node.output[0]] = pooled
        return {}

    def cleared(self, node: onnx.NodeProto) -> frozenset[int]:
        """The node's inputs whose flat positions it takes back to each row's own: both of a Sub of
        two over the same input, a MaxUnpool's indices of a MaxPool."""
        if node.op_type == "Sub" and len(node.input) == 2:
            first, second = (self._pooled.get(name) for name in node.input)
            if first is not None and second is not None and first[0] == second[0]:
                return frozenset({0, 1})
        if node.op_type == "MaxUnpool" and len(node.input) > 1 and node.input[1] in self._pooled:
            return frozenset({1})
        return frozenset()
