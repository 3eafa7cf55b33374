"""Config values that load but could never serve: refused at load, naming the field and the bound.

A RepositoryModelLoad `config` override can set any value its field's type holds. `dims` whose
fixed dimensions multiply past the server's element bound describe a tensor no request may send
(server/protocol/codec.py refuses it), and a max_queue_delay of 2^64-1 microseconds held every
request that had no batch mates until its deadline. Priority levels need no bound: the queue keeps
counts only for levels in use (batcher/queue.py), so 2^64-1 levels cost nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from math import prod

from protos import model_config_pb2 as mc
from server.models.config_errors import ConfigError
from server.tensor_bounds import MAX_DIMS, MAX_ELEMENTS

# One hour: far past any batching wait (the tests' longest is 60 s) and any sensible deadline; a
# longer wait is not batching but a request parked until its caller gives up.
MAX_QUEUE_DELAY_US = 3_600_000_000


def check_bounds(config: mc.ModelConfig, source: str) -> None:
    """ConfigError naming the first field whose value no request could be served with."""
    batched = config.max_batch_size > 0
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:
            where = f"{source}: {kind} '{tensor.name}'"
            _check_dims(f"{where}: dims", list(tensor.dims), batched)
            if tensor.HasField("reshape"):
                _check_dims(f"{where}: reshape.shape", list(tensor.reshape.shape), batched)
    delays: list[tuple[str, int]] = []
    if config.HasField("dynamic_batching"):
        delays.append(("dynamic_batching", config.dynamic_batching.max_queue_delay_microseconds))
    if config.HasField("sequence_batching"):
        sb = config.sequence_batching
        delays += [
            (f"sequence_batching.{s}", getattr(sb, s).max_queue_delay_microseconds)
            for s in ("oldest", "direct")
        ]
    _check_delays(source, delays)


def _check_dims(where: str, dims: list[int], batched: bool) -> None:
    # The batch dimension is one more on the wire; variable (-1) and zero dims do not count towards
    # the bound, as codec.py counts only nonzero dimensions.
    most = MAX_DIMS - 1 if batched else MAX_DIMS
    if len(dims) > most:
        extra = " (one more is the batch dimension)" if batched else ""
        raise ConfigError(f"{where} {dims} has {len(dims)} dimensions; at most {most}{extra}")
    if prod(d for d in dims if d > 0) > MAX_ELEMENTS:
        raise ConfigError(
            f"{where} {dims}: its fixed dimensions multiply past {MAX_ELEMENTS} (2**40), the most "
            "elements one tensor may describe: no request could send it"
        )


def _check_delays(source: str, delays: Iterable[tuple[str, int]]) -> None:
    for field, delay_us in delays:
        if delay_us > MAX_QUEUE_DELAY_US:
            raise ConfigError(
                f"{source}: {field}.max_queue_delay_microseconds {delay_us} exceeds "
                f"{MAX_QUEUE_DELAY_US} (one hour): a request without batch mates would wait that long"
            )
