"""Queued input bytes are bounded per model and for the server: a request that would pass either
budget is refused at once (QueueFull naming the setting), and leaving the queue frees its bytes."""

from __future__ import annotations

import numpy as np
import pytest

from batcher.admission import Admission
from batcher.budget import ByteBudget, input_bytes
from batcher.errors import QueueFull
from batcher.queue import RequestQueue
from batcher.types import BatchingPolicy

NOW = 10.0
POLICY = BatchingPolicy(max_batch_size=8)
KIB = np.zeros(256, np.float32)  # 1024 bytes


def admission() -> Admission:
    return Admission.settle(POLICY, 1, now=NOW, deadline=None, timeout_s=None, priority=0)


def queue(*budgets: ByteBudget) -> RequestQueue:
    return RequestQueue(POLICY, lambda: NOW, budgets=budgets)


def admit(q: RequestQueue, array: np.ndarray = KIB) -> object:
    return q.admit({"x": array}, admission(), lambda rows: 0.0)


async def test_a_model_budget_refuses_the_request_that_would_pass_it_and_frees_on_removal() -> None:
    model = ByteBudget(3 * 1024, "max_queued_bytes_per_model")
    q = queue(model)
    first, *_ = [admit(q) for _ in range(3)]
    with pytest.raises(QueueFull, match=r"would pass max_queued_bytes_per_model=3072 \(3072 bytes queued\)"):
        admit(q)
    assert len(q) == 3 and model.used == 3072
    assert q.remove(first)  # type: ignore[arg-type]
    assert model.used == 2048
    admit(q)
    q.fail_all(lambda: QueueFull())
    assert model.used == 0


async def test_the_server_budget_is_shared_by_every_queue() -> None:
    server = ByteBudget(2 * 1024, "max_queued_bytes")
    a = queue(ByteBudget(10_000, "max_queued_bytes_per_model"), server)
    b = queue(ByteBudget(10_000, "max_queued_bytes_per_model"), server)
    admit(a)
    admit(b)
    with pytest.raises(QueueFull, match="max_queued_bytes=2048"):
        admit(a)
    # The refused request charged nothing to the model budget either.
    assert server.used == 2048


async def test_an_expired_request_frees_its_bytes() -> None:
    model = ByteBudget(1024, "max_queued_bytes_per_model")
    q = queue(model)
    p = admit(q)
    q._expire(p, due=0.0)  # type: ignore[arg-type]  # what its deadline timer does when due
    assert model.used == 0 and len(q) == 0


def test_bytes_tensors_count_their_payloads() -> None:
    texts = np.array([b"a" * 1000, b"b" * 24], dtype=object)
    assert input_bytes({"t": texts}) == texts.nbytes + 1024
    assert input_bytes({"x": KIB, "y": KIB}) == 2048
