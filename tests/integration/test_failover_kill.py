"""Scale-out, shown locally: three server processes, one client balancing over them, one SIGKILLed
mid-load (no drain). No call is lost: each one the dead server had is retried within its deadline.

The victim holds one call for certain at the kill: its `pair` model waits (60 s) for a second row
that never comes, while the survivors' `pair` answers at once. The mlp load runs on all three.
"""

from __future__ import annotations

import re
import signal
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from clients import ChannelOptions, Client, RetryPolicy
from tests.integration.client_fixtures import HELD_FOR_A_PAIR, features
from tests.support.models import slow_model
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until

ANSWERS_AT_ONCE = "max_batch_size: 2\n"
PENDING_PAIR = re.compile(r'^nv_inference_pending_request_count\{[^}]*model="pair"[^}]*\} (\S+)$', re.M)
RETRY = RetryPolicy(max_attempts=10)
RR = ChannelOptions(load_balancing="round_robin")


class Load:
    """Closed-loop mlp calls from a few threads through one client; answers and failures counted."""

    def __init__(self, client: Client, threads: int) -> None:
        self.client = client
        self.changed = threading.Condition()
        self.done = 0
        self.failures: list[BaseException] = []
        self.stop = threading.Event()
        self.workers = [threading.Thread(target=self._loop) for _ in range(threads)]

    def _loop(self) -> None:
        data = {"features": features(1)}
        while not self.stop.is_set():
            try:
                assert self.client.infer("mlp", data)["scores"].shape == (1, 2)
            except BaseException as exc:  # recorded; the test fails on it
                with self.changed:
                    self.failures.append(exc)
                    self.changed.notify_all()
                return
            with self.changed:
                self.done += 1
                self.changed.notify_all()

    def wait_past(self, count: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.done >= count or bool(self.failures), 60)


def repository(root: Path, demo_repo: Path, pair_config: str) -> Path:
    mlp = demo_repo / "mlp"
    write_model(root, "mlp", mlp / "1" / "model.onnx", (mlp / "config.pbtxt").read_text())
    write_model(root, "pair", slow_model(root.parent / f"{root.name}.onnx", matmuls=1, size=8), pair_config)
    return root


@pytest.fixture(scope="module")
def survivors(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Two nodes whose `pair` answers at once; never killed, shared by the tests of this module."""
    quick = repository(tmp_path_factory.mktemp("failover") / "survivor", demo_repo, ANSWERS_AT_ONCE)
    started = [ServerProcess("--model-repository", str(quick)) for _ in range(2)]
    try:
        with ThreadPoolExecutor(len(started)) as pool:  # start together: each waits for its models
            list(pool.map(ServerProcess.start, started))
        yield started
    finally:
        for server in started:
            server.kill()


@pytest.fixture()
def nodes(demo_repo: Path, tmp_path: Path, survivors: list[ServerProcess]) -> Iterator[list[ServerProcess]]:
    """A fresh victim (its `pair` holds a call), then the survivors; the victim is killed after."""
    victim = ServerProcess(
        "--model-repository", str(repository(tmp_path / "victim", demo_repo, HELD_FOR_A_PAIR))
    )
    try:
        yield [victim.start(), *survivors]
    finally:
        victim.kill()


def pending_pair(server: ServerProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as page:
        match = PENDING_PAIR.search(page.read().decode())
    return float(match.group(1)) if match else 0.0


def test_sigkill_of_one_node_mid_load_loses_no_call(nodes: list[ServerProcess]) -> None:
    victim, *survivors = nodes
    addresses = [server.address for server in nodes]
    client = Client(addresses, default_timeout_s=30, retry=RETRY)
    # A fresh client's first call goes to its first endpoint: the victim, where `pair` holds it.
    held_client = Client(addresses, default_timeout_s=30, retry=RETRY)
    load = Load(client, threads=3)
    x = np.ones((1, 1), np.float32)
    with ThreadPoolExecutor(1) as pool:
        held: Future[dict[str, np.ndarray]] = pool.submit(held_client.infer, "pair", {"x": x})
        for worker in load.workers:
            worker.start()
        try:
            assert load.wait_past(30)
            wait_until(lambda: pending_pair(victim) == 1, "the victim to hold the pair call")
            victim.kill()  # SIGKILL: no drain; its connections die with it
            answered_at_kill = load.done
            np.testing.assert_allclose(held.result(60)["y"], x, rtol=1e-6)  # retried on a survivor
            assert load.wait_past(answered_at_kill + 60)
        finally:
            load.stop.set()
            for worker in load.workers:
                worker.join(60)
            client.close()
            held_client.close()
    assert not load.failures, load.failures
    assert client.endpoint_health() == {addresses[0]: False, addresses[1]: True, addresses[2]: True}
    assert held_client.endpoint_health()[victim.address] is False
    assert all(mlp_count(survivor) > 0 for survivor in survivors)


def test_one_round_robin_channel_over_every_address_survives_a_sigkill(nodes: list[ServerProcess]) -> None:
    """As a client of a Kubernetes headless Service: one target resolving to every replica (here the
    `ipv4:` list a DNS name would give), balanced by gRPC's round_robin, our retries on top."""
    victim, *survivors = nodes
    target = "ipv4:" + ",".join(server.address for server in nodes)
    client = Client(target, default_timeout_s=30, retry=RETRY, channel_options=RR)
    load = Load(client, threads=3)
    for worker in load.workers:
        worker.start()
    try:
        assert load.wait_past(60)
        wait_until(lambda: mlp_count(victim) > 0, "round_robin to reach the victim")
        victim.kill()
        assert load.wait_past(load.done + 60)
    finally:
        load.stop.set()
        for worker in load.workers:
            worker.join(60)
        client.close()
    assert not load.failures, load.failures
    assert all(mlp_count(survivor) > 0 for survivor in survivors)


def test_with_an_attempt_timeout_a_hung_node_loses_no_call(nodes: list[ServerProcess]) -> None:
    """SIGSTOP: the node keeps its connections open and answers nothing, as one cut off by the
    network. Its calls are cut at attempt_timeout_s and retried elsewhere, within their deadline
    (without it each call sent there waits out its whole deadline and fails)."""
    victim, *survivors = nodes
    addresses = [server.address for server in nodes]
    policy = RetryPolicy(max_attempts=10, attempt_timeout_s=1.0)
    client = Client(addresses, default_timeout_s=5, retry=policy)
    load = Load(client, threads=3)
    for worker in load.workers:
        worker.start()
    try:
        assert load.wait_past(30)
        assert victim.process is not None
        victim.process.send_signal(signal.SIGSTOP)  # the fixture's SIGKILL ends it
        assert load.wait_past(load.done + 60)
    finally:
        load.stop.set()
        for worker in load.workers:
            worker.join(60)
        client.close()
    assert not load.failures, load.failures
    assert client.endpoint_health()[victim.address] is False
    assert all(mlp_count(survivor) > 0 for survivor in survivors)


def mlp_count(server: ServerProcess) -> int:
    with Client(server.address, default_timeout_s=5) as check:
        (stats,) = check.model_statistics("mlp").model_stats
        return int(stats.inference_count)
