"""onnxruntime's once-a-process costs, paid before the first load is measured.

The first session a process opens builds what every later one shares: the runtime's environment,
its CPU kernel registry, the graph optimizers' registrations (measured: 1.33 MB of malloc'd heap
with onnxruntime 1.31, 1.17 MB with 1.23, the same whatever the model). A footprint is the heap's
growth over a load (server/models/footprint.py), so the first model loaded in a process was charged
them: an MLP of 0.45 MB measured 2.19 MB, and a budget of 1 MiB refused it for good once evicted.
Opening a one-node session first, outside the measure, leaves each load its own cost.

onnx's shape inference, which a load runs on the graph (server/backends/onnx_row_mixing.py), builds
its op schemas on its first call (the demo MLP's first load measured 5.54 MB, the next 0.45 MB): it is
run once here too, and so is onnx's lookup of a schema by opset (`onnx.defs.has`, which the reading of
ops of other domains asks: 6.5 MB on its first call, session 56).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from server.backends.onnxruntime_backend import CPU

log = logging.getLogger(__name__)


def _one_node_model() -> onnx.ModelProto:
    """A float32 Identity of one element (opset 13, IR 8: every onnxruntime we run opens it)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "one_time_costs", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def pay_one_time_costs() -> None:
    """Open, run once and let go a one-node session on the CPU (blocks a few milliseconds: call
    it off the event loop). What stays allocated after it is the process's, not a model's."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    model = _one_node_model()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=[CPU])
    session.run(None, {"x": np.zeros(1, np.float32)})
    onnx.shape_inference.infer_shapes(model, data_prop=True)
    onnx.defs.has("Identity", 13, "")  # onnx_foreign_ops.foreign asks it of every node


class OneTimeCosts:
    """The costs paid once, before the process's first measured load (server/models/lazy.py): they
    had been charged to the first model (2.19 MB for an MLP whose reloads measure 0.45)."""

    def __init__(self, pay: Callable[[], None] = pay_one_time_costs) -> None:
        self._pay: Callable[[], None] | None = pay  # None once paid

    async def pay_once(self) -> None:
        pay, self._pay = self._pay, None
        if pay is None:
            return
        try:
            await asyncio.to_thread(pay)
        except Exception as exc:  # the first footprint is then only too big, as it had been
            log.warning("onnxruntime's one-time costs not paid before the first load: %s", exc)
