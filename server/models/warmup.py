"""A model's `model_warmup` samples, run through every instance before it takes traffic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from math import prod
from pathlib import Path

import numpy as np
import numpy.random  # imported at start: numpy imports it on first use, and a first load paid it

from batcher.types import Array, Backend
from protos import model_config_pb2 as mc
from server import datatypes
from server.backends.batch_axes import to_model
from server.backends.onnxruntime_backend import TENSORRT
from server.backends.tensorrt_options import engine_build_feeds
from server.errors import InvalidRequest
from server.models.config_errors import ConfigError
from server.models.model_files import read_model_file
from server.models.sequence_config import SequenceModel
from server.models.warmup_sequence import check_server_filled, server_filled, with_server_filled
from server.protocol.codec import unpack_bytes

log = logging.getLogger(__name__)


# A sample's runs per instance: Triton sets no bound, and a client's config with a count of 1e9 held
# its load (and every later load or unload of the model) until the server restarted.
MAX_WARMUP_COUNT = 1000


async def warm_up(
    config: mc.ModelConfig,
    backends: Sequence[Backend],
    directory: Path,
    max_sample_bytes: int,
    sequence: SequenceModel | None = None,
) -> None:
    """Run the config's model_warmup samples through every instance before it takes traffic
    (after the runs that build TensorRT's engines, on TensorRT instances). A sample's inputs may
    hold at most `max_sample_bytes` (the server's message limit: no request could be larger).
    On a sequence model (`sequence`) the state and control inputs a sample leaves out are filled
    as for a one-request sequence (warmup_sequence.py); the instances are run directly, so no
    sequence is opened."""
    for sample in config.model_warmup:  # every sample checked before any engine is built or run
        check_sample(config, sample, max_sample_bytes)
    await build_engines(config, backends)
    rng = np.random.default_rng(0)
    for sample in config.model_warmup:
        # Off the event loop: the inputs may be read from files, or be large.
        inputs = await asyncio.to_thread(_sample_inputs, config, sample, directory, rng, max_sample_bytes)
        if sequence is not None:
            inputs = with_server_filled(sequence.spec, inputs, max(sample.batch_size, 1))
            inputs = to_model(inputs, sequence.batch_axes)  # the instances here are not wrapped
        for backend in backends:
            for _ in range(max(sample.count, 1)):
                await backend.run(inputs)
        log.info("model %s: warm-up sample '%s' ran", config.name, sample.name)


def _sample_inputs(
    config: mc.ModelConfig, sample: mc.ModelWarmup, directory: Path, rng: np.random.Generator, max_bytes: int
) -> dict[str, Array]:
    inputs: dict[str, Array] = {}
    for name, spec in sample.inputs.items():
        where = f"sample '{sample.name}': input '{name}'"
        dtype, shape = datatypes.BY_CONFIG[spec.data_type], _shape(config, sample, spec)
        rows = shape[0] if config.max_batch_size > 0 else 1
        inputs[name] = _warmup_array(spec, dtype, shape, directory, rng, where, max_bytes, rows)
    return inputs


def _shape(config: mc.ModelConfig, sample: mc.ModelWarmup, spec: mc.ModelWarmup.Input) -> tuple[int, ...]:
    shape = tuple(spec.dims)
    return (max(sample.batch_size, 1), *shape) if config.max_batch_size > 0 else shape


def check_sample(config: mc.ModelConfig, sample: mc.ModelWarmup, max_sample_bytes: int) -> None:
    """ValueError naming the sample's field when it cannot run: onnxruntime's own words (a feed
    "missing" an input) named no config field."""
    if sample.count > MAX_WARMUP_COUNT:
        raise ValueError(f"sample '{sample.name}': count {sample.count} is past the limit {MAX_WARMUP_COUNT}")
    total = 0
    for name, spec in sample.inputs.items():
        if spec.data_type not in datatypes.BY_CONFIG:
            raise ValueError(f"sample '{sample.name}': input '{name}': data_type is not a tensor type")
        shape = _shape(config, sample, spec)
        if any(d < 0 for d in shape):
            raise ValueError(f"sample '{sample.name}': input '{name}': dims {list(spec.dims)} must be fixed")
        dtype = datatypes.BY_CONFIG[spec.data_type]
        total += prod(shape) * (8 if dtype is datatypes.BYTES else dtype.numpy.itemsize)  # BYTES: pointers
        if total > max_sample_bytes:
            raise ValueError(
                f"sample '{sample.name}': inputs of more than {max_sample_bytes} bytes "
                "(max_message_bytes): no request could be that large"
            )
    names = {i.name for i in config.input if not i.optional}
    # A sequence model's state and control inputs may be given (as Triton's samples must), else
    # the server fills them.
    filled = server_filled(config)
    unknown = sorted(set(sample.inputs) - {i.name for i in config.input} - set(filled))
    if unknown:
        known = sorted(i.name for i in config.input)
        also = f"; sequence_batching's state and control inputs: {sorted(filled)}" if filled else ""
        raise ValueError(
            f"sample '{sample.name}': inputs {unknown} are not inputs of the model ({known}{also})"
        )
    check_server_filled(config, sample)
    missing = sorted(names - set(sample.inputs))
    if missing:
        raise ValueError(f"sample '{sample.name}': inputs {missing} of the model are not given")
    if 0 < config.max_batch_size < sample.batch_size:
        raise ValueError(
            f"sample '{sample.name}': batch_size {sample.batch_size} is past max_batch_size "
            f"{config.max_batch_size}"
        )


async def build_engines(config: mc.ModelConfig, backends: Sequence[Backend]) -> None:
    """On instances running TensorRT, one zero batch at each of the profile's batch sizes: TensorRT
    builds (or loads from its cache) the engines now, before the model is ready, rather than
    during the first requests (server/backends/tensorrt_options.py)."""
    engines = [b for b in backends if list(getattr(b, "active_providers", ()))[:1] == [TENSORRT]]
    feeds = engine_build_feeds(config) if engines else []
    for backend in engines:
        for feed in feeds:
            try:
                await backend.run(feed)
            except Exception as exc:
                shapes = {name: list(array.shape) for name, array in feed.items()}
                raise RuntimeError(f"TensorRT engine build run with shapes {shapes} failed: {exc}") from exc
    if engines:
        log.info("model %s: TensorRT engines built for %d batch shapes", config.name, len(feeds))


def _warmup_array(
    spec: mc.ModelWarmup.Input,
    dtype: datatypes.Datatype,
    shape: tuple[int, ...],
    directory: Path,
    rng: np.random.Generator,
    where: str,
    max_bytes: int,
    rows: int = 1,  # the sample's batch_size (1 for a model without a batch dimension)
) -> Array:
    kind = spec.WhichOneof("input_data_type")
    if kind == "input_data_file":  # Triton's place for it: <model>/warmup/<file>, and nowhere else
        relative = f"warmup/{spec.input_data_file}"
        where = f"{where}: input_data_file '{spec.input_data_file}'"
        return _file_array(spec.input_data_file, dtype, shape, directory, relative, where, max_bytes, rows)
    if dtype is datatypes.BYTES:
        return np.full(shape, b"", dtype=object)
    if kind == "random_data":
        if dtype.numpy.kind == "f":
            return rng.standard_normal(shape).astype(dtype.numpy)
        if dtype.numpy.kind == "b":
            return rng.integers(0, 2, shape).astype(np.bool_)
        return rng.integers(0, 100, shape).astype(dtype.numpy)
    return np.zeros(shape, dtype=dtype.numpy)


def _file_array(
    name: str,
    dtype: datatypes.Datatype,
    shape: tuple[int, ...],
    directory: Path,
    relative: str,
    where: str,
    max_bytes: int,
    rows: int,
) -> Array:
    """A sample input from its file: one row's data, given to each of the sample's `rows` rows as
    Triton's warm-up does (a file of one sample under batch_size 4 had failed the load), or the
    whole batch's."""
    if dtype is datatypes.BYTES:
        raw = read_model_file(directory, relative, where, max_bytes)
        try:
            return unpack_bytes(name, raw, prod(shape)).reshape(shape)
        except InvalidRequest:
            if rows <= 1:
                raise
            row = unpack_bytes(name, raw, prod(shape[1:])).reshape(1, *shape[1:])
            return np.repeat(row, rows, axis=0)
    whole = prod(shape) * dtype.numpy.itemsize
    one = whole // rows if rows > 1 else whole
    raw = read_model_file(directory, relative, where, whole, expected_bytes=None if one < whole else whole)
    if len(raw) == whole:
        return np.frombuffer(raw, dtype=dtype.numpy).reshape(shape)
    if len(raw) != one:
        said = f"{one} (one row) or {whole} (all {rows} rows)" if one != whole else f"{whole}"
        raise ConfigError(f"{where} has {len(raw)} bytes, expected {said}")
    return np.repeat(np.frombuffer(raw, dtype=dtype.numpy).reshape(1, *shape[1:]), rows, axis=0)
