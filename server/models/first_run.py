"""A model without `model_warmup` runs one row of zeros through each instance inside its load,
under a memory budget only (`model_memory_budget_mb`: the one thing that reads its footprint).

onnxruntime (1.31) allocates a session's CPU arena chunk at its FIRST run, not at its creation: the
demo MLP's session adds 0.45 MiB to the heap when created and 1.03 MiB more at its first run. A
footprint is the heap's growth over the load (server/models/footprint.py), so a model without
warm-up was counted 0.45 MiB while it held 1.45 MiB after its first request, and that chunk fell
into whichever load was measured next (another model's: 0.45 measured 1.5). onnxruntime 1.23 (the
3.10 venv) allocates the chunk at creation already: there the run adds next to nothing.

Integer inputs are filled with ones, not zeros: onnxruntime 1.23 ends the process (SIGFPE) on an
integer division by zero. The run is left out (the chunk then comes with the first request, as
before) where a safe input cannot be made: a dimension left variable (-1) besides the batch, a
BYTES input (no value every model takes), inputs over the server's message limit, or the identity
backend (no onnxruntime). It only measures, so it never holds up the load: one that fails is
logged and the load goes on; one that takes longer than `limit_s` is stopped (onnxruntime's
terminate flag, `abandon`), its instance is replaced by a fresh one (`renew`), and the load goes on
measured without it. (A zero input can take a path real inputs never do: a Loop of 1e7 turns held
every other load for 40 s.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from math import prod

import numpy as np

from batcher.types import Array
from protos import model_config_pb2 as mc
from server import datatypes
from server.backends.batch_axes import to_model
from server.backends.fault_backend import Session
from server.models.config import IDENTITY
from server.models.sequence_config import SequenceModel
from server.models.warmup_sequence import with_server_filled

log = logging.getLogger(__name__)

# The zero run's limit when the model's run_timeout_s is longer (or 0, none): a measure is not
# worth holding up every other load for (they wait one at a time; resnet's first run takes 80 ms).
FIRST_RUN_MAX_S = 10.0


def zero_feed(config: mc.ModelConfig, max_bytes: int) -> dict[str, Array] | None:
    """One row of zeros (ones for integer inputs) for each input the model needs (a completed
    config), or None where no safe input can be made (see the module's docstring)."""
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
        # Integers are 1: onnxruntime 1.23 (the 3.10 venv) kills the process (SIGFPE) on an integer
        # Div or Mod by zero, and a load's run of zeros through `1 / x` had ended the server.
        fill = np.ones if dtype.numpy.kind in "iu" else np.zeros
        feed[tensor.name] = fill(shape, dtype=dtype.numpy)
    return feed or None


def first_run_limit(run_timeout_s: float) -> float:
    """How long the zero run may take: the model's run timeout (the watchdog's), at most
    FIRST_RUN_MAX_S (also when the watchdog is off, 0)."""
    return min(run_timeout_s, FIRST_RUN_MAX_S) if run_timeout_s > 0 else FIRST_RUN_MAX_S


async def first_run(
    config: mc.ModelConfig,
    sessions: list[Session],
    max_bytes: int,
    sequence: SequenceModel | None = None,
    *,
    renew: Callable[[int], Awaitable[Session]],
    limit_s: float = FIRST_RUN_MAX_S,
) -> None:
    """Run `zero_feed` once through each instance (`sessions`, before the batcher wraps them), so
    that the load's measure holds each session's arena chunk. On a sequence model the state and
    control inputs are filled as for a one-request sequence (as a warm-up sample's). A run past
    `limit_s` is stopped and its session replaced in `sessions` by `renew(index)`."""
    feed = zero_feed(config, max_bytes)
    if feed is None:
        log.debug("model %s: no first run in its load (model_warmup, or no safe zero input)", config.name)
        return
    if sequence is not None:
        feed = to_model(with_server_filled(sequence.spec, feed, 1), sequence.batch_axes)
    loop = asyncio.get_running_loop()
    for index, session in enumerate(sessions):
        # Not logged as a failed batch: its failure is this module's one INFO line.
        run = loop.run_in_executor(session.executor, partial(session.run_blocking, feed, log_failure=False))
        try:
            await asyncio.wait_for(run, limit_s)
        except asyncio.CancelledError:  # the load was cancelled (the server stops): end the run too
            session.abandon()
            raise
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            session.abandon()  # onnxruntime ends the run between nodes; nobody waits for it
            log.warning(
                "model %s: first run of zeros took longer than %g s: stopped, instance %d replaced; "
                "its footprint is measured without that run (the zero input may take a path real "
                "inputs do not: give the model a model_warmup with real samples)",
                config.name, limit_s, index,
            )  # fmt: skip
            sessions[index] = await renew(index)
            return
        except Exception as exc:  # only a measure: its first request allocates the chunk instead
            log.info("model %s: first run of zeros failed, its footprint may be counted short: %s",
                     config.name, exc)  # fmt: skip
            return
