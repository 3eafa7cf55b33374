"""Zoo checks: requests sent together (so that the dynamic batcher coalesces them) through
tritonclient or our client, each answer compared with onnxruntime run on that request alone."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as tg
from tritonclient.utils import np_to_triton_dtype

from clients import Client

BOUND_S = 30.0  # generous: only the 60 s queue delay (which a full batch never waits for) exceeds it
# Requests of four rows in all reach the preferred size (in rows, as Triton's) and run as one batch
# at once; fewer wait 60 s, past any bound here: sent together, they are batched together for certain.
BATCH_OF_FOUR_ROWS = """
max_batch_size: 8
dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 60000000 }
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "idle_dispatch" value: { string_value: "false" } }
"""

Tensors = Mapping[str, np.ndarray]
Answer = dict[str, np.ndarray] | Exception


def _wire_type(array: np.ndarray) -> str:
    return "BYTES" if array.dtype == object else str(np_to_triton_dtype(array.dtype))


def triton_together(
    address: str, model: str, requests: Sequence[Tensors], outputs: Sequence[str]
) -> list[Answer]:
    """Send every request at once with tritonclient's async_infer; each one's outputs or error."""
    answers: list[Answer | None] = [None] * len(requests)
    done = [threading.Event() for _ in requests]
    client = tg.InferenceServerClient(address)
    try:
        for k, request in enumerate(requests):
            inputs = []
            for name, array in request.items():
                tensor = tg.InferInput(name, list(array.shape), _wire_type(array))
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)

            def answered(result: tg.InferResult | None, error: Exception | None, k: int = k) -> None:
                answers[k] = error if error is not None else {o: result.as_numpy(o) for o in outputs}  # type: ignore[union-attr]
                done[k].set()

            wanted = [tg.InferRequestedOutput(o) for o in outputs]
            client.async_infer(model, inputs, answered, outputs=wanted, client_timeout=BOUND_S)
        for event in done:
            assert event.wait(BOUND_S), f"no answer from {model} within {BOUND_S} s"
    finally:
        client.close()
    return [a for a in answers if a is not None]


def ours_together(address: str, model: str, requests: Sequence[Tensors]) -> list[Answer]:
    """Send every request at once with our client from as many threads; each one's outputs or error."""

    def one(request: Tensors) -> Answer:
        try:
            return client.infer(model, request, timeout_s=BOUND_S)
        except Exception as exc:
            return exc

    with Client(address) as client, ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def alone(model_file: Path, request: Tensors) -> dict[str, np.ndarray]:
    """onnxruntime on `request` alone: the answer it must get, batched or not."""
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = {name: _as_text(array) for name, array in request.items()}
    return dict(zip(names, session.run(names, feed), strict=True))


def _as_text(array: np.ndarray) -> np.ndarray:
    """BYTES as onnxruntime's Python binding takes a string tensor: str (UTF-8), not bytes."""
    if array.dtype != object:
        return array
    return np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[object])(array)


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Exact for integers, bools and strings, np.allclose for floats. A scalar per row is served as
    dims [1] (Triton's reshape: []), so `got` may have one trailing 1 more than `want`."""
    assert got.shape in (want.shape, (*want.shape, 1)), f"{what}: shape {got.shape}, onnxruntime {want.shape}"
    got = got.reshape(want.shape)
    if want.dtype.kind in "OU":  # onnxruntime answers strings as str, the wire as bytes
        want = np.vectorize(lambda s: s.encode() if isinstance(s, str) else s, otypes=[object])(want)
        assert got.tolist() == want.tolist(), f"{what}: {got!r} != {want!r}"
    elif want.dtype.kind == "f":
        assert got.dtype == want.dtype and np.allclose(got, want, equal_nan=True), (
            f"{what}: {got!r} != {want!r}"
        )
    else:
        assert got.dtype == want.dtype and np.array_equal(got, want), f"{what}: {got!r} != {want!r}"


def assert_each_alone(
    model_file: Path, requests: Sequence[Tensors], answers: Sequence[Answer], model: str
) -> None:
    """Every answer is OK and what onnxruntime computes for its request alone."""
    for k, (request, answer) in enumerate(zip(requests, answers, strict=True)):
        assert not isinstance(answer, Exception), f"{model} request {k}: {answer}"
        want = alone(model_file, request)
        assert set(answer) == set(want), f"{model} request {k}: outputs {sorted(answer)}"
        for name, array in want.items():
            assert_same(answer[name], array, f"{model} request {k} output {name!r}")
