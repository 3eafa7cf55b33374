"""Inputs for calibration and validation: read from .npy/.npz files, or generated from the model.

A data directory holds `.npy` files (a model with one input: each file is rows for it) or `.npz`
files (one array per input name). An array whose rank is the input's rank less one is one row. Each
file is cut into batches on its own, so files may differ in their non-batch dimensions (sequence
length). Generated inputs follow the graph's declared inputs: seeded, image-like (smooth noise) for
4-D inputs, ones for inputs named like a mask, zeros for token types, small integers otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

logger = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]
# A symbolic dimension other than the batch one (e.g. sequence length) when inputs are generated.
GENERATED_DIM = 16


class OptimizeError(Exception):
    """A problem with the command's inputs; the message says what and where."""


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, dimensions (int, or None when symbolic) and numpy dtype."""

    name: str
    dims: tuple[int | None, ...]
    dtype: np.dtype

    @property
    def batched(self) -> bool:
        """Whether the first dimension is free (a batch dimension)."""
        return bool(self.dims) and self.dims[0] is None


def input_specs(model_path: Path) -> list[InputSpec]:
    """The graph's real inputs (initializers listed as inputs are left out)."""
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, OSError, ...: all mean "not a model"
        raise OptimizeError(f"{model_path}: not a readable ONNX model: {err}") from None
    if not model.graph.node and not model.graph.input:  # a zero-byte file parses as an empty model
        raise OptimizeError(f"{model_path}: not an ONNX model (an empty graph: is the file empty?)")
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        if not tensor.HasField("elem_type"):
            raise OptimizeError(f"{model_path}: input '{value.name}' is not a tensor")
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        specs.append(InputSpec(value.name, dims, dtype))
    return specs


def _rows(array: np.ndarray, spec: InputSpec, source: str) -> np.ndarray:
    if array.ndim == len(spec.dims) - 1 and spec.batched:
        array = array[np.newaxis]
    if array.ndim != len(spec.dims):
        raise OptimizeError(
            f"{source}: '{spec.name}' has rank {array.ndim}, the model takes {len(spec.dims)}"
        )
    for axis, (have, want) in enumerate(zip(array.shape, spec.dims, strict=True)):
        if want is not None and have != want and not (axis == 0 and spec.batched):
            raise OptimizeError(
                f"{source}: '{spec.name}' has shape {array.shape}, the model takes {spec.dims}"
            )
    if array.dtype != spec.dtype:
        if not np.can_cast(array.dtype, spec.dtype, "same_kind"):
            raise OptimizeError(f"{source}: '{spec.name}' is {array.dtype}, the model takes {spec.dtype}")
        array = array.astype(spec.dtype)
    return array


NPY_MAGIC, NPZ_MAGIC = b"\x93NUMPY", b"PK"  # how numpy's array files and zip archives start


def _read_file(path: Path, specs: list[InputSpec]) -> Batch:
    try:
        with path.open("rb") as file:
            head = file.read(len(NPY_MAGIC))
        magic, kind = (NPY_MAGIC, ".npy array") if path.suffix == ".npy" else (NPZ_MAGIC, ".npz archive")
        if not head.startswith(magic):  # numpy's own words were about "pickled (object) data"
            raise OptimizeError(f"{path}: not a numpy {kind} file (it does not start as one: a text file?)")
        batch = _read_arrays(path, specs)
    except (ValueError, OSError, EOFError) as err:  # numpy's words for a file it cannot read
        raise OptimizeError(f"{path}: not a numpy .npy/.npz file it can read ({err})") from None
    for name, array in batch.items():
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            count = int(np.sum(~np.isfinite(array)))
            raise OptimizeError(f"{path}: input '{name}' holds {count} NaN or infinite values")
    return batch


def _read_arrays(path: Path, specs: list[InputSpec]) -> Batch:
    if path.suffix == ".npy":
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise OptimizeError(f"{path}: a model with several inputs ({names}) needs .npz files")
        return {specs[0].name: _rows(np.load(path, allow_pickle=False), specs[0], str(path))}
    with np.load(path, allow_pickle=False) as archive:
        missing = [s.name for s in specs if s.name not in archive.files]
        if missing:
            raise OptimizeError(f"{path}: no array for input(s) {missing} (has {archive.files})")
        return {s.name: _rows(archive[s.name], s, f"{path}[{s.name}]") for s in specs}


def load_batches(directory: Path, specs: list[InputSpec], batch_size: int, max_rows: int) -> list[Batch]:
    """Batches of at most `batch_size` rows from the .npy/.npz files in `directory`, `max_rows` in all."""
    files = sorted(p for p in directory.iterdir() if p.suffix in (".npy", ".npz") and p.is_file())
    if not files:
        raise OptimizeError(f"{directory}: no .npy or .npz files")
    batches: list[Batch] = []
    taken = 0
    for path in files:
        arrays = _read_file(path, specs)
        count = {len(a) for a in arrays.values()}
        if len(count) != 1:
            raise OptimizeError(f"{path}: inputs differ in row count {sorted(count)}")
        step = batch_size if all(s.batched for s in specs) else count.pop()
        total = len(next(iter(arrays.values())))
        for start in range(0, total, step):
            if taken >= max_rows:
                return batches
            stop = min(start + step, total, start + max_rows - taken)
            batches.append({name: a[start:stop] for name, a in arrays.items()})
            taken += stop - start
    if not batches:
        raise OptimizeError(f"{directory}: its files hold no rows")
    return batches


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], cell: int = 16) -> np.ndarray:
    """Spatially correlated noise (a coarse grid of values, upsampled): closer to images than white noise."""
    *lead, height, width = shape
    coarse = rng.standard_normal((*lead, -(-height // cell), -(-width // cell)), dtype=np.float32)
    fine = np.repeat(np.repeat(coarse, cell, axis=-2), cell, axis=-1)[..., :height, :width]
    detail = 0.25 * rng.standard_normal(shape, dtype=np.float32)
    return np.asarray(fine + detail, np.float32)


def _generate(spec: InputSpec, rows: int, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(
        (rows if i == 0 and spec.batched else GENERATED_DIM) if d is None else d
        for i, d in enumerate(spec.dims)
    )
    lowered = spec.name.lower()
    if spec.dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(spec.dtype, np.floating):
        values = _smooth(rng, shape) if len(shape) == 4 else rng.standard_normal(shape, dtype=np.float32)
        return values.astype(spec.dtype)
    if "mask" in lowered:
        return np.ones(shape, spec.dtype)
    if "type" in lowered:
        return np.zeros(shape, spec.dtype)
    if spec.dtype == np.uint8:
        image = _smooth(rng, shape[:1] + shape[3:] + shape[1:3]) if len(shape) == 4 else rng.random(shape)
        if len(shape) == 4:  # NHWC frames: channels last
            image = np.moveaxis(image, 1, -1)
        return np.clip(image * 50 + 128, 0, 255).astype(np.uint8)
    return rng.integers(0, 1000, shape).astype(spec.dtype)


def generate_batches(specs: list[InputSpec], rows: int, batch_size: int, seed: int) -> list[Batch]:
    """`rows` generated rows in batches of `batch_size` (a model with a fixed first dimension: its size)."""
    rng = np.random.default_rng(seed)
    fixed = [s.dims[0] for s in specs if not s.batched and s.dims and s.dims[0] is not None]
    step = fixed[0] if fixed else batch_size
    batches = []
    for start in range(0, rows, step):
        count = min(step, rows - start) if not fixed else step
        batches.append({s.name: _generate(s, count, rng) for s in specs})
    return batches


def obtain_batches(
    directory: Path | None, specs: list[InputSpec], *, purpose: str, rows: int, batch_size: int, seed: int
) -> list[Batch]:
    """Batches from `directory`, or generated ones with a warning that real data is better."""
    if directory is not None:
        if not directory.is_dir():
            raise OptimizeError(f"{purpose} data: {directory} is not a directory")
        return load_batches(directory, specs, batch_size, rows)
    logger.warning(
        "no %s data given: using %d inputs generated from the model's metadata; real inputs "
        "give a truer %s (--%s-data DIR of .npy/.npz files)",
        purpose,
        rows,
        "calibration" if purpose == "calibration" else "accuracy figure",
        purpose,
    )
    return generate_batches(specs, rows, batch_size, seed)


def repeat_rows(batch: Batch, rows: int) -> Batch:
    """`batch` tiled or cut to `rows` rows (inputs for a speed measurement at a given batch size)."""
    out = {}
    for name, array in batch.items():
        reps = -(-rows // len(array))
        out[name] = np.ascontiguousarray(np.concatenate([array] * reps)[:rows])
    return out
