"""Several endpoints: round-robin, failover when a server stops mid-run, fallback only when all are down."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from clients import AsyncClient, Backoff, Client, RetryPolicy
from tests.integration import client_fixtures
from tests.integration.client_fixtures import features
from tests.support.nothing_listening import nothing_listening
from tests.support.server_process import ServerProcess

start_demo_server = client_fixtures.start_demo_server


def mlp_count(address: str) -> int:
    with Client(address) as client:
        (stats,) = client.model_statistics("mlp").model_stats
        return int(stats.inference_count)


class Progress:
    """Calls answered and calls failed by the worker threads, with a wait on their count."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.done = 0
        self.failures: list[BaseException] = []

    def answered(self) -> None:
        with self.changed:
            self.done += 1
            self.changed.notify_all()

    def failed(self, exc: BaseException) -> None:
        with self.changed:
            self.failures.append(exc)
            self.changed.notify_all()

    def wait_past(self, count: int, timeout_s: float = 60.0) -> bool:
        """Until `count` calls are answered or one failed (False after a generous `timeout_s`)."""
        with self.changed:
            return self.changed.wait_for(lambda: self.done >= count or bool(self.failures), timeout_s)


def test_calls_survive_servers_stopping_mid_run_and_fall_back_only_when_all_are_down(
    start_demo_server: Callable[[], ServerProcess], zoo_server: ServerProcess
) -> None:
    first, second = start_demo_server(), start_demo_server()
    fallback = zoo_server.address
    fallback_before = mlp_count(fallback)
    data = features(2)
    progress = Progress()
    stop = threading.Event()
    client = Client(
        [first.address, second.address],
        fallback=fallback,
        default_timeout_s=30,
        retry=RetryPolicy(max_attempts=10),
    )

    def loop() -> None:
        while not stop.is_set():
            try:
                out = client.infer("mlp", {"features": data})
                assert out["scores"].shape == (2, 2)
                progress.answered()
            except BaseException as exc:  # recorded, then the test fails on it
                progress.failed(exc)
                return

    workers = [threading.Thread(target=loop) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        assert progress.wait_past(20)
        # Round-robin: both primaries served; the fallback none.
        assert mlp_count(first.address) > 0 and mlp_count(second.address) > 0
        assert first.terminate() == 0  # graceful: drains, answers UNAVAILABLE, then closes
        assert progress.wait_past(progress.done + 40)
        assert mlp_count(fallback) == fallback_before  # one primary is still up
        assert client.endpoint_health()[first.address] is False
        assert second.terminate() == 0
        assert progress.wait_past(progress.done + 20)
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
        client.close()
    assert not progress.failures, progress.failures
    assert mlp_count(fallback) > fallback_before  # every primary down: the fallback served
    assert client.endpoint_health() == {first.address: False, second.address: False, fallback: True}


def test_a_refused_connection_goes_to_the_next_endpoint_at_once(zoo_server: ServerProcess) -> None:
    """The retry slept the backoff before trying the next endpoint, and gave up when the backoff did
    not fit the deadline: with a 50 ms deadline a third to half of first calls failed. A backoff
    longer than the deadline shows it without timing anything."""
    slow = RetryPolicy(backoff=Backoff(initial_s=60.0, max_s=60.0))
    with nothing_listening() as dead:  # held: no other test's server can take the port meanwhile
        for _ in range(3):  # a fresh client: its first call goes to the dead endpoint first
            with Client([dead, zoo_server.address], retry=slow, default_timeout_s=30) as client:
                assert client.infer("mlp", {"features": features(1)})["scores"].shape == (1, 2)
                assert client.endpoint_health() == {dead: False, zoo_server.address: True}


async def test_async_client_skips_a_dead_endpoint_and_uses_the_fallback_when_all_are_dead(
    zoo_server: ServerProcess,
) -> None:
    data = {"features": features(1)}
    with nothing_listening() as dead, nothing_listening() as other_dead:  # held for the test
        async with AsyncClient([dead, zoo_server.address]) as client:
            results = [await client.infer("mlp", data) for _ in range(6)]
            assert client.endpoint_health() == {dead: False, zoo_server.address: True}
        async with AsyncClient([dead, other_dead], fallback=zoo_server.address) as client:
            results += [await client.infer("mlp", data) for _ in range(3)]
            assert client.endpoint_health()[zoo_server.address] is True
            assert not any(client.endpoint_health()[a] for a in client.pool.addresses[:2])
    for result in results[1:]:
        np.testing.assert_allclose(result["scores"], results[0]["scores"], rtol=1e-6)
