"""Fault injection (server/backends/fault_backend.py), the watchdog's replacement of a real
onnxruntime instance (server/backends/instances.py), and how the manager wires both, in-process.

Hangs end on events (abandoning or closing a fault-injected instance releases its hung run), not
on time; real time appears only as the watchdog's limit for runs meant to outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper

from batcher.errors import RunTimedOut
from protos import model_config_pb2 as mc
from server.backends.fault_backend import FaultBackend, FaultSpec, InjectedFault, wait_at_gate
from server.backends.instances import InstanceFactory, run_timeout_for
from server.backends.onnxruntime_backend import CPU, BackendLoadError, OrtBackend, OrtOptions
from server.models.config import ConfigError
from server.models.manager import ModelManager
from server.models.versions import READY, UNAVAILABLE
from server.settings import ServerSettings
from tests.support.models import slow_model

LONG = 5.0
LIMIT = 0.5  # the watchdog's limit where a run is meant to outlive it


def dense_model(path: Path) -> Path:
    """x FP32 [N,4] -> y FP32 [N,2] (Gemm)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"])],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def config(text: str) -> mc.ModelConfig:
    parsed = mc.ModelConfig()
    text_format.Parse(text, parsed)
    return parsed


def params(**values: str) -> str:
    return "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items()
    )


X = {"x": np.ones((1, 4), np.float32)}


# -- the parameters ------------------------------------------------------------------------------


def test_a_model_without_fault_parameters_gets_no_faults() -> None:
    assert FaultSpec.from_config(config(params(idle_dispatch="true")), "c.pbtxt", allowed=True) is None


def test_faults_need_the_server_setting() -> None:
    asked = config(params(fault_raise_every="2", fault_load_error="true"))
    with pytest.raises(ConfigError) as refused:
        FaultSpec.from_config(asked, "m/config.pbtxt", allowed=False)
    message = str(refused.value)
    assert message.startswith("m/config.pbtxt: parameters ['fault_load_error', 'fault_raise_every']")
    assert "allow_fault_injection" in message and "--allow-fault-injection" in message
    assert "SLUICEWAY_ALLOW_FAULT_INJECTION" in message


def test_fault_parameters_are_parsed_and_checked() -> None:
    spec = FaultSpec.from_config(
        config(
            params(fault_raise_every="3", fault_hang_every="2", fault_hang_s="0.5", fault_load_error="TRUE")
        ),
        "c",
        allowed=True,
    )
    assert spec == FaultSpec(raise_every=3, hang_every=2, hang_s=0.5, load_error=True)
    assert FaultSpec.from_config(config(params(fault_hang_every="1")), "c", allowed=True) == FaultSpec(
        hang_every=1, hang_s=3600.0
    )
    for key, value, rule in (
        ("fault_raise_every", "-1", "whole number"),
        ("fault_hang_every", "often", "whole number"),
        ("fault_hang_s", "0", "positive number of seconds"),
        ("fault_hang_s", "inf", "positive number of seconds"),
        ("fault_load_error", "yes", "'true' or 'false'"),
    ):
        with pytest.raises(ConfigError, match=rf"^c: parameters '{key}' must be .*{rule}.*got '{value}'"):
            FaultSpec.from_config(config(params(**{key: value})), "c", allowed=True)


def test_run_timeout_parameter_overrides_the_server_setting() -> None:
    assert run_timeout_for(config(""), "c", 30.0) == 30.0
    assert run_timeout_for(config(params(run_timeout_s="2.5")), "c", 30.0) == 2.5
    assert run_timeout_for(config(params(run_timeout_s="0")), "c", 30.0) == 0.0
    for bad in ("-1", "soon", "nan", "inf"):
        with pytest.raises(
            ConfigError, match=rf"^c: parameters 'run_timeout_s' must be seconds >= 0.*'{bad}'"
        ):
            run_timeout_for(config(params(run_timeout_s=bad)), "c", 30.0)


# -- the backend ---------------------------------------------------------------------------------


@pytest.fixture
def session(tmp_path: Path) -> OrtBackend:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort-fault")
    return OrtBackend(dense_model(tmp_path / "m.onnx"), OrtOptions(), [(CPU, {})], executor, model_name="m")


async def test_every_nth_run_raises_and_the_others_answer(session: OrtBackend) -> None:
    backend = FaultBackend(session, FaultSpec(raise_every=2))
    try:
        expected = session.run_blocking(X)["y"]
        outcomes = []
        for _ in range(4):
            try:
                np.testing.assert_array_equal((await backend.run(X))["y"], expected)
                outcomes.append("ok")
            except InjectedFault as fault:
                assert "run " in str(fault) and "fault_raise_every=2" in str(fault)
                outcomes.append("raised")
        assert outcomes == ["ok", "raised", "ok", "raised"] and backend.runs == 4
    finally:
        backend.close()


async def test_a_hang_shorter_than_forever_is_a_slow_run(session: OrtBackend) -> None:
    backend = FaultBackend(session, FaultSpec(hang_every=1, hang_s=0.01))
    try:
        assert (await asyncio.wait_for(backend.run(X), LONG))["y"].shape == (1, 2)
    finally:
        backend.close()


class Waited(threading.Event):
    """An event that says when someone starts waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


async def test_abandoning_a_hung_instance_releases_its_thread(session: OrtBackend) -> None:
    backend = FaultBackend(session, FaultSpec(hang_every=1))
    assert not hasattr(backend, "run_blocking")  # never run inline by the batcher
    released = Waited()
    backend._released = released  # the event a hung run waits on
    run = asyncio.ensure_future(backend.run(X))
    assert await asyncio.to_thread(released.waiting.wait, LONG)  # the run is hanging
    backend.abandon()
    with pytest.raises(InjectedFault, match="abandoned"):  # it hung, and abandoning released it
        await asyncio.wait_for(run, LONG)
    with pytest.raises(RuntimeError):  # and it takes no more runs
        await backend.run(X)


async def test_abandon_stops_a_running_onnxruntime_session(tmp_path: Path) -> None:
    # About 10 s a run; abandoning one in progress makes onnxruntime end it between two nodes.
    path = slow_model(tmp_path / "slow.onnx", matmuls=2000)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort-slow")
    backend = OrtBackend(path, OrtOptions(), [(CPU, {})], executor, model_name="slow")
    started = threading.Event()

    def run() -> object:
        started.set()
        return backend.run_blocking({"x": np.ones((1, 1), np.float32)})

    running = asyncio.get_running_loop().run_in_executor(executor, run)
    assert await asyncio.to_thread(started.wait, LONG)
    backend.abandon()
    with pytest.raises(Exception, match="terminate"):
        await asyncio.wait_for(running, LONG)


def test_an_injected_load_failure_is_a_load_error(tmp_path: Path) -> None:
    factory = InstanceFactory(
        dense_model(tmp_path / "m.onnx"), OrtOptions(), [(CPU, {})], name="m", workers=1,
        faults=FaultSpec(load_error=True),
    )  # fmt: skip
    with pytest.raises(
        BackendLoadError, match=r"^model 'm': failed to load on purpose \(parameters 'fault_load_error'\)$"
    ):
        factory.session()


# -- the manager, in this process ------------------------------------------------------------------


def write(repo: Path, name: str, text: str, onnx_file: Path) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(text)
    (repo / name / "1" / "model.onnx").symlink_to(onnx_file)


BATCHED = "max_batch_size: 8\ndynamic_batching { }\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    onnx_file = dense_model(tmp_path / "files" / "dense.onnx")
    repo = tmp_path / "repo"
    write(repo, "plain", BATCHED, onnx_file)
    one = "instance_group [ { count: 1 kind: KIND_CPU } ]\n"  # the instance the hang holds
    write(repo, "hangs", BATCHED + one + params(fault_hang_every="2", run_timeout_s=str(LIMIT)), onnx_file)
    write(repo, "noload", BATCHED + params(fault_load_error="true"), onnx_file)
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
    return repo


@contextlib.asynccontextmanager
async def loaded(repo: Path, tmp_path: Path, **settings: Any) -> AsyncIterator[ModelManager]:
    manager = ModelManager(repo, ServerSettings(cache_dir=tmp_path, **settings), lambda name, ready: None)
    await manager.load_all()
    try:
        yield manager
    finally:
        await manager.stop(drain_timeout_s=1.0)


async def test_without_the_setting_a_faulty_model_fails_to_load_and_the_others_serve(
    repo: Path, tmp_path: Path
) -> None:
    async with loaded(repo, tmp_path) as manager:
        states = {e.name: (e.state, e.reason) for e in manager.entries()}
        assert states["plain"] == (READY, "")
        for name in ("hangs", "noload"):
            state, reason = states[name]
            assert state == UNAVAILABLE and "allow_fault_injection" in reason, reason
        assert states["broken"][0] == UNAVAILABLE and "model.onnx" in states["broken"][1]
        assert manager.resolve("plain").batcher.watchdog.limit_s == 30.0  # the server's default
        out = await manager.resolve("plain").batcher.submit(X, 1)
        assert out["y"].shape == (1, 2)


async def test_a_hung_instance_is_replaced_by_a_fresh_session(repo: Path, tmp_path: Path) -> None:
    async with loaded(repo, tmp_path, allow_fault_injection=True) as manager:
        index = {e.name: e for e in manager.entries()}
        assert index["noload"].state == UNAVAILABLE
        assert (
            index["noload"].reason
            == "model 'noload': failed to load on purpose (parameters 'fault_load_error')"
        )
        version = manager.resolve("hangs")
        batcher = version.batcher
        assert batcher.watchdog.limit_s == LIMIT  # the model's own run_timeout_s
        [stuck] = version.backends
        assert isinstance(stuck, FaultBackend)
        await batcher.submit(X, 1)  # run 1
        with pytest.raises(RunTimedOut):
            await asyncio.wait_for(batcher.submit(X, 1), LONG)  # run 2 hangs
        assert (await asyncio.wait_for(batcher.submit(X, 1), LONG))["y"].shape == (1, 2)
        [fresh] = version.backends  # the manager's list follows: stopping closes the fresh one
        assert fresh is not stuck and isinstance(fresh, FaultBackend) and fresh.runs == 1
        assert batcher.watchdog.replaced == 1
        with pytest.raises(RuntimeError):  # the stuck one was abandoned
            await stuck.run(X)


def test_a_load_gate_must_be_a_named_pipe(tmp_path: Path) -> None:
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    spec = FaultSpec.from_config(config(params(fault_load_gate=str(fifo))), "c", allowed=True)
    assert spec == FaultSpec(load_gate=str(fifo))
    spec = FaultSpec.from_config(config(params(fault_run_gate=str(fifo))), "c", allowed=True)
    assert spec == FaultSpec(run_gate=str(fifo))
    spec = FaultSpec.from_config(config(params(fault_replace_gate=str(fifo))), "c", allowed=True)
    assert spec == FaultSpec(replace_gate=str(fifo))
    with pytest.raises(
        ConfigError, match=r"^c: parameters 'fault_replace_gate' must be the absolute path of a"
    ):
        FaultSpec.from_config(config(params(fault_replace_gate="gate")), "c", allowed=True)
    (tmp_path / "file").write_text("")
    for path in (str(tmp_path / "file"), str(tmp_path / "missing"), "gate", str(tmp_path)):
        with pytest.raises(
            ConfigError, match=r"^c: parameters 'fault_load_gate' must be the absolute path of a"
        ):
            FaultSpec.from_config(config(params(fault_load_gate=path)), "c", allowed=True)


def test_a_load_waits_at_its_gate_until_a_writer_opens_and_closes_it(tmp_path: Path) -> None:
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    through = threading.Event()
    waiting = threading.Thread(target=lambda: (wait_at_gate("model m: load", str(fifo)), through.set()))
    waiting.start()
    with fifo.open("wb") as writer:  # opens once the waiting side has opened the pipe
        writer.write(b"x")
        assert not through.is_set()  # still reading: the writer has not closed
    waiting.join(30)
    assert through.is_set()
