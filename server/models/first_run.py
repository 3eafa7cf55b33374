"""A model without `model_warmup` runs one row of zeros through each instance inside its load.

onnxruntime (1.31) allocates a session's CPU arena chunk at its FIRST run, not at its creation: the
demo MLP's session adds 0.45 MiB to the heap when created and 1.03 MiB more at its first run. A
footprint is the heap's growth over the load (server/models/footprint.py), so a model without
warm-up was counted 0.45 MiB while it held 1.45 MiB after its first request, and that chunk fell
into whichever load was measured next (another model's: 0.45 measured 1.5). onnxruntime 1.23 (the
3.10 venv) allocates the chunk at creation already: there the run adds next to nothing.

The run is left out (the chunk then comes with the first request, as before) where a safe input
cannot be made: a dimension left variable (-1) besides the batch, a BYTES input (no value every
model takes), inputs over the server's message limit, or the identity backend (no onnxruntime). A
run that fails is logged and the load goes on: it only measures.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from math import prod

import numpy as np

from batcher.types import Array, Backend
from protos import model_config_pb2 as mc
from server import datatypes
from server.backends.batch_axes import to_model
from server.models.config import IDENTITY
from server.models.sequence_config import SequenceModel
from server.models.warmup_sequence import with_server_filled

log = logging.getLogger(__name__)


def zero_feed(config: mc.ModelConfig, max_bytes: int) -> dict[str, Array] | None:
    """One row of zeros for each input the model needs (a completed config), or None where no safe
    input can be made (see the module's docstring)."""
    if config.backend == IDENTITY or config.model_warmup:
        return None
    feed: dict[str, Array] = {}
    total = 0
    for tensor in config.input:
        if tensor.optional:
            continue
        dtype = datatypes.BY_CONFIG.get(tensor.data_type)
        dims = list(tensor.dims)
        if dtype is None or dtype is datatypes.BYTES or any(d < 0 for d in dims):
            return None
        shape = (1, *dims) if config.max_batch_size > 0 else tuple(dims)
        total += prod(shape) * dtype.numpy.itemsize
        if total > max_bytes:
            return None
        feed[tensor.name] = np.zeros(shape, dtype=dtype.numpy)
    return feed or None


async def first_run(
    config: mc.ModelConfig, backends: Sequence[Backend], max_bytes: int, sequence: SequenceModel | None = None
) -> None:
    """Run `zero_feed` once through each instance (`backends`: the sessions, before the batcher
    wraps them), so that the load's measure holds each session's arena chunk. On a sequence model
    the state and control inputs are filled as for a one-request sequence (as a warm-up sample's)."""
    feed = zero_feed(config, max_bytes)
    if feed is None:
        log.debug("model %s: no first run in its load (model_warmup, or no safe zero input)", config.name)
        return
    if sequence is not None:
        feed = to_model(with_server_filled(sequence.spec, feed, 1), sequence.batch_axes)
    for backend in backends:
        try:
            await backend.run(feed)
        except Exception as exc:  # only a measure: its first request allocates the chunk instead
            log.info("model %s: first run of zeros failed, its footprint may be counted short: %s",
                     config.name, exc)  # fmt: skip
            return
