"""Triton's wording for the errors its QA tests match (qa/L0_server_status, L0_input_validation).

Triton's tests compare these texts with `startswith` or `assertIn`, so each message starts with
Triton's sentence; our extra detail, where any, follows after "; ". The gRPC status codes stay ours
(server/errors.py): Triton's tests check the words, not the codes.
"""

from __future__ import annotations

from collections.abc import Iterable

from protos.wire import LENGTH

EMPTY_MODEL_NAME = "Model name cannot be empty. Please enter a valid name to deploy."


def unknown_model(model: str) -> str:
    return f"Request for unknown model: '{model}' is not found"


def unknown_version(model: str, version: str, served: Iterable[int]) -> str:
    listed = ", ".join(str(v) for v in served)
    return f"Request for unknown model: '{model}' version {version} is not found; served versions: {listed}"


def version_not_available(model: str) -> str:
    return f"requested model version is not available for model '{model}'"


def path_traversal(model: str) -> str:
    return f"invalid model name '{model}', model name must not contain path traversal characters"


def not_in_repository(model: str) -> str:
    return f"failed to load '{model}', failed to poll from model repository; it has no directory '{model}'"


def unexpected_input(name: str, model: str, expected: Iterable[str]) -> str:
    return f"unexpected inference input '{name}' for model '{model}'; its inputs: {', '.join(expected)}"


def missing_inputs(
    model: str, given: Iterable[str], missing: Iterable[str], required: int, total: int
) -> str:
    got = list(given)
    if required == total:
        expected = f"expected {total} inputs"
    else:
        expected = f"expected number of inputs between {required} and {total}"
    return (
        f"{expected} but got {len(got)} inputs for model '{model}'. Got input(s) {_names(got)}, "
        f"but missing required input(s) {_names(missing)}. Please provide all required input(s)."
    )


def unexpected_shape(name: str, model: str, expected: list[int], got: list[int]) -> str:
    where = f"for input '{name}' for model '{model}'"
    return f"unexpected shape {where}. Expected {_dims(expected)}, got {_dims(got)}."


def batch_too_large(model: str, max_batch_size: int, rows: int) -> str:
    return (
        f"inference request batch-size must be <= {max_batch_size} for '{model}'; the request has {rows} rows"
    )


def byte_size_mismatch(name: str, model: str, expected: int, got: int, detail: str) -> str:
    return (
        f"input byte size mismatch for input '{name}' for model '{model}'. "
        f"Expected {expected}, got {got}; {detail}"
    )


def string_count(name: str, model: str, data: bytes, count: int) -> str | None:
    """Triton's text when BYTES data holds another number of elements than the shape says, else None.

    Walks the 4-byte length prefixes only (no allocation) and stops one element past `count`, as
    Triton does, so a hostile shape or payload costs at most one pass over the data."""
    seen, offset = 0, 0
    while offset + LENGTH.size <= len(data) and seen <= count:
        (length,) = LENGTH.unpack_from(data, offset)
        seen += 1
        offset += LENGTH.size + length
    where = f"for inference input '{name}' for model '{model}'"
    if seen > count:
        return f"unexpected number of string elements {seen} {where}, expecting {count}"
    if seen < count:
        return f"expected {count} string elements {where}, got {seen}"
    return None


def _names(names: Iterable[str]) -> str:
    # Triton's list form: ['A','B'] (no spaces), [] when empty.
    return "[" + ",".join(f"'{n}'" for n in names) + "]"


def _dims(dims: Iterable[int]) -> str:
    # Triton's DimsListToString form: [-1,16].
    return "[" + ",".join(str(d) for d in dims) + "]"


def no_correlation_id(model: str) -> str:
    """Triton's text for a request to a sequence model that names no sequence."""
    return f"inference request to model '{model}' must specify a non-zero or non-empty correlation ID"
