"""A model's `model_warmup` samples, run through every instance before it takes traffic."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from batcher.types import Array
from protos import model_config_pb2 as mc
from server import datatypes
from server.backends.onnxruntime_backend import OrtBackend
from server.protocol.codec import unpack_bytes

log = logging.getLogger(__name__)


async def warm_up(config: mc.ModelConfig, backends: list[OrtBackend], directory: Path) -> None:
    """Run the config's model_warmup samples through every instance before it takes traffic."""
    rng = np.random.default_rng(0)
    for sample in config.model_warmup:
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
