"""The shape of each input a request carries, from the model's dims, `--shape` and `--batch-size`.

perf_analyzer's rule: for a model with a batch dimension (a leading -1 in ModelMetadata) `--shape`
names the dims after it and `--batch-size` gives the rows; other -1 dims are 1 unless `--shape`
says otherwise. A shape that cannot fit is refused before any load: a `--shape` that had replaced
the whole shape sent `[64]` to a `[-1,64]` model (every request refused), or one row while the
results counted `--batch-size` rows a request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from protos import grpc_service_pb2 as pb

Shape = tuple[int, ...]


class InputMismatch(ValueError):
    """A `--shape` or `--batch-size` the model's inputs cannot take (exit 2, before any load)."""


def parse_shapes(items: Sequence[str]) -> dict[str, Shape]:
    """`--shape NAME=D1,D2,...` flags as {name: dims}."""
    shapes: dict[str, Shape] = {}
    for item in items:
        name, sep, text = item.partition("=")
        try:
            dims = tuple(int(d) for d in text.split(","))
        except ValueError:
            dims = ()
        if not sep or not name or not dims or min(dims) < 1:
            raise InputMismatch(f"--shape expects NAME=D1,D2,... of whole numbers >= 1, got {item!r}")
        shapes[name] = dims
    return shapes


def is_batched(dims: Sequence[int]) -> bool:
    """A leading -1 is the batch dimension (as Triton publishes a model with max_batch_size > 0)."""
    return bool(dims) and dims[0] == -1


def input_shapes(
    metadata: pb.ModelMetadataResponse, batch_size: int, overrides: Mapping[str, Shape]
) -> dict[str, Shape]:
    """Concrete shapes: `batch_size` rows for a batched input, each row as `overrides` says (the
    dims after the batch dimension) or with its -1 dims as 1."""
    names = [tensor.name for tensor in metadata.inputs]
    for name in overrides:
        if name not in names:
            raise InputMismatch(f"--shape {name}: the model has no such input (inputs: {sorted(names)})")
    shapes: dict[str, Shape] = {}
    for tensor in metadata.inputs:
        dims = tuple(int(d) for d in tensor.shape)
        batched = is_batched(dims)
        if batch_size > 1 and not batched:
            # The results count --batch-size rows a request; this input carries its shape as it is.
            raise InputMismatch(
                f"--batch-size {batch_size}: input '{tensor.name}' has dims [{_text(dims)}], no batch "
                "dimension (a leading -1), so a request carries one row: pass --batch-size 1"
            )
        per_row = dims[1:] if batched else dims
        given = overrides.get(tensor.name)
        if given is None:
            row = tuple(1 if d < 0 else d for d in per_row)
        elif _fits(given, per_row):
            row = given
        else:
            raise InputMismatch(_misfit(tensor.name, given, dims))
        shapes[tensor.name] = (batch_size, *row) if batched else row
    return shapes


def rows_sent(metadata: pb.ModelMetadataResponse, shapes: Mapping[str, Sequence[int]]) -> int:
    """Rows a request whose arrays have these shapes carries: the first dim of its batched inputs
    (1 without any), what the server computes and the results must count."""
    rows = {shapes[t.name][0] for t in metadata.inputs if is_batched(t.shape) and shapes.get(t.name)}
    if len(rows) > 1:
        raise InputMismatch(f"the batched inputs would carry different rows a request: {sorted(rows)}")
    return rows.pop() if rows else 1


def _fits(given: Shape, dims: Shape) -> bool:
    return len(given) == len(dims) and all(d < 0 or d == g for g, d in zip(given, dims, strict=True))


def _misfit(name: str, given: Shape, dims: Shape) -> str:
    """Why `given` does not fit, and what to pass instead."""
    head = f"--shape {name}={_text(given)} does not fit input '{name}' with dims [{_text(dims)}]"
    per_row = dims[1:] if is_batched(dims) else dims
    if not per_row:
        after = " after the batch dimension" if is_batched(dims) else ""
        return f"{head}: it has no dims{after} to set: leave --shape {name} out"
    if not is_batched(dims):
        return (
            f"{head}: pass {_count(dims)} matching them (-1: any size), "
            f"e.g. --shape {name}={_example(given, dims)}"
        )
    if len(given) == len(dims):  # the batch dim included, as the whole shape had been given
        return (
            f"{head}: its leading -1 is the batch dimension, which --batch-size sets; --shape gives the "
            f"dims after it: pass --shape {name}={_example(given[1:], per_row)} and the rows as --batch-size"
        )
    return (
        f"{head}: pass the {_count(per_row)} after the batch dimension (--batch-size sets that one) "
        f"matching [{_text(per_row)}] (-1: any size), e.g. --shape {name}={_example(given, per_row)}"
    )


def _example(given: Shape, dims: Shape) -> str:
    """`dims` with each -1 taken from `given` where it has a value there, else 1."""
    return _text([d if d >= 0 else (given[i] if i < len(given) else 1) for i, d in enumerate(dims)])


def _count(dims: Shape) -> str:
    return f"{len(dims)} dim{'s' if len(dims) != 1 else ''}"


def _text(dims: Sequence[int]) -> str:
    return ",".join(str(d) for d in dims)
