"""Whether a model's run can cost what an input's value says rather than its size: a Loop whose
trip count or condition a request sends. Such a model's batches never run inline on the event loop.

The batcher runs a batch inline when runs at least as large have been timed under
`inline_run_max_us` (batcher/estimate.py): size, not value, is what it compares. After twenty
requests looping once, one asking for 3e9 iterations held the event loop past `run_timeout_s`
with no end: the server answered no liveness probe and SIGTERM did not stop it (a tester, session
57). Through the instance's executor the same run is watched: UNAVAILABLE at `run_timeout_s`, the
server serving on. Read without the weights, as the integer division guard reads a model
(int_division_scan.may_hold: a node's op_type bytes)."""

from __future__ import annotations

from pathlib import Path

from server.backends.int_division_scan import may_hold

LOOPED = (b"Loop",)


def value_costed(path: Path) -> bool:
    """Whether the model file at `path` may hold a Loop (anything not an ONNX file: no; the bytes
    "Loop" anywhere outside its weights, a name too: yes, its runs then merely not inline)."""
    return path.is_file() and path.suffix == ".onnx" and may_hold(path, LOOPED)
