"""A model's `model_warmup` samples, run through every instance before it takes traffic."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from batcher.types import Array, Backend
from protos import model_config_pb2 as mc
from server import datatypes
from server.backends.onnxruntime_backend import TENSORRT
from server.backends.tensorrt_options import engine_build_feeds
from server.protocol.codec import unpack_bytes

log = logging.getLogger(__name__)


async def warm_up(config: mc.ModelConfig, backends: Sequence[Backend], directory: Path) -> None:
    """Run the config's model_warmup samples through every instance before it takes traffic
    (after the runs that build TensorRT's engines, on TensorRT instances)."""
    await build_engines(config, backends)
    rng = np.random.default_rng(0)
    for sample in config.model_warmup:
        check_sample(config, sample)
        inputs: dict[str, Array] = {}
        for name, spec in sample.inputs.items():
            dtype = datatypes.BY_CONFIG[spec.data_type]
            shape = tuple(spec.dims)
            if config.max_batch_size > 0:
                shape = (max(sample.batch_size, 1), *shape)
            inputs[name] = _warmup_array(spec, dtype, shape, directory, rng)
        for backend in backends:
            for _ in range(max(sample.count, 1)):
                await backend.run(inputs)
        log.info("model %s: warm-up sample '%s' ran", config.name, sample.name)


def check_sample(config: mc.ModelConfig, sample: mc.ModelWarmup) -> None:
    """ValueError naming the sample's field when it cannot run: onnxruntime's own words (a feed
    "missing" an input) named no config field."""
    names = {i.name for i in config.input if not i.optional}
    unknown = sorted(set(sample.inputs) - {i.name for i in config.input})
    if unknown:
        known = sorted(i.name for i in config.input)
        raise ValueError(f"sample '{sample.name}': inputs {unknown} are not inputs of the model ({known})")
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
) -> Array:
    kind = spec.WhichOneof("input_data_type")
    if kind == "input_data_file":
        raw = (directory / "warmup" / spec.input_data_file).read_bytes()
        if dtype is datatypes.BYTES:
            return unpack_bytes(spec.input_data_file, raw, int(np.prod(shape))).reshape(shape)
        return np.frombuffer(raw, dtype=dtype.numpy).reshape(shape)
    if dtype is datatypes.BYTES:
        return np.full(shape, b"", dtype=object)
    if kind == "random_data":
        if dtype.numpy.kind == "f":
            return rng.standard_normal(shape).astype(dtype.numpy)
        if dtype.numpy.kind == "b":
            return rng.integers(0, 2, shape).astype(np.bool_)
        return rng.integers(0, 100, shape).astype(dtype.numpy)
    return np.zeros(shape, dtype=dtype.numpy)
