"""The server as a process: start-up errors, port conflicts, graceful shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import admin_pb2 as apb
from protos import admin_pb2_grpc as apb_grpc
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.dispatched import dispatched
from tests.support.procfs import alive, children_of
from tests.support.server_process import REPO_ROOT, ServerProcess, wait_until

# Alone, after the parallel phase (scripts/test.sh): signals, worker processes and their exit.
pytestmark = pytest.mark.serial


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_setting_names_the_field(demo_repo: Path) -> None:
    run = run_cli("serve", "--model-repository", str(demo_repo), env={"SLUICEWAY_MAX_QUEUE_SIZE": "zero"})
    assert run.returncode == 2
    assert "invalid setting 'max_queue_size'" in run.stderr
    run = run_cli("serve", "--port", "70000")
    assert run.returncode == 2 and "'port'" in run.stderr
    # The value refused is shown, though "0" is in the message's own words (it had not been: s55).
    run = run_cli("serve", "--repository-poll-secs", "0")
    assert run.returncode == 2 and "greater than 0 (got '0')" in run.stderr, run.stderr
    run = run_cli("serve", "--log-format", "tex")  # the start of a choice the message names
    assert run.returncode == 2 and "(got 'tex')" in run.stderr, run.stderr


def test_port_in_use_is_an_error(zoo_server: ServerProcess, demo_repo: Path) -> None:
    run = run_cli("serve", "--model-repository", str(demo_repo), "--port", str(zoo_server.port))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "cannot listen on 127.0.0.1:" in run.stderr
    # Said so, not grpc's "Failed to bind ... set GRPC_VERBOSITY=debug" (a tester, session 55).
    assert "the port is in use (another process holds it)" in run.stderr, run.stderr


def test_sigterm_finishes_in_flight_work_and_exits_zero(demo_repo: Path) -> None:
    server = ServerProcess("--model-repository", str(demo_repo)).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            data = np.zeros((16, 3, 224, 224), np.float32)
            request = pb.ModelInferRequest(
                model_name="resnet",
                inputs=[
                    pb.ModelInferRequest.InferInputTensor(
                        name="image", datatype="FP32", shape=[16, 3, 224, 224]
                    )
                ],
                raw_input_contents=[data.tobytes()],
            )

            before = dispatched(server.metrics_port, "resnet")
            in_flight = stub.ModelInfer.future(request, timeout=120)
            # Read from the server, not assumed after a sleep: the request is in a batch.
            wait_until(
                lambda: in_flight.done() or dispatched(server.metrics_port, "resnet") > before,
                "the request to be dispatched",
            )
            assert server.terminate() == 0
            # The request that was running when SIGTERM came still got its answer.
            assert list(in_flight.result().outputs[0].shape) == [16, 1000]
    finally:
        server.kill()
    server.wait_for_output("shutting down")


def test_workers_share_the_port_and_stop_together(demo_repo: Path) -> None:
    server = ServerProcess("--model-repository", str(demo_repo), "--workers", "2").start()
    try:
        server.wait_for_output("2 workers")
        # The port is held: a second server cannot take it.
        run = run_cli("serve", "--model-repository", str(demo_repo), "--port", str(server.port))
        assert run.returncode == 1 and "cannot listen" in run.stderr
        answered = 0
        for _ in range(6):  # separate connections spread over the workers
            with grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                stub = pb_grpc.GRPCInferenceServiceStub(ch)
                request = pb.ModelInferRequest(
                    model_name="mlp",
                    inputs=[
                        pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 64])
                    ],
                    raw_input_contents=[np.zeros((1, 64), np.float32).tobytes()],
                )
                answered += len(stub.ModelInfer(request, timeout=30).outputs)
        assert answered == 6
        with grpc.insecure_channel(server.address) as ch:  # shared by the workers: rollout_share.py
            admin = apb_grpc.AdminStub(ch)
            changed = admin.SetWeights(apb.SetWeightsRequest(model="mlp", weights={1: 100}), timeout=30)
            assert changed.source == "admin" and changed.worker in ("0", "1")
            assert admin.RolloutStatus(apb.RolloutStatusRequest(model="mlp"), timeout=30).model == "mlp"
        assert server.terminate() == 0
        lines = server.output()
        assert "[worker 0] server.models" in lines and "[worker 1] server.models" in lines  # who wrote it
    finally:
        server.kill()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_workers_stop_on_a_sigterm_the_kernel_gives_another_thread_of_the_parent(demo_repo: Path) -> None:
    """`kill` of one of the parent's thread ids hands the process's SIGTERM to that thread (a busy
    process meets this by chance). It used to run the default action there: the parent died and
    left its workers serving."""
    server = ServerProcess("--model-repository", str(demo_repo), "--workers", "2").start()
    try:
        assert server.process is not None
        parent = server.process.pid
        workers = children_of(parent)
        assert len(workers) == 2, workers
        others = sorted(int(t) for t in os.listdir(f"/proc/{parent}/task") if int(t) != parent)
        assert others, "the parent runs no thread besides its main one"
        os.kill(others[0], signal.SIGTERM)
        assert server.process.wait(60) == 0, server.output()[-3000:]
        wait_until(lambda: not any(alive(w) for w in workers), "the workers to exit", timeout_s=60)
    finally:
        server.kill()
        for worker in children_of(server.process.pid if server.process else -1):
            os.kill(worker, signal.SIGKILL)


@contextmanager
def hangups_not_ignored() -> Iterator[None]:
    """Servers started inside it get SIGHUP's default disposition, whatever this process has: a test
    command run under nohup (SIGHUP ignored, inherited through exec) had its servers ignore the
    hang-up these tests send, as the server is meant to under nohup, and they timed out."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_sighup_drains_and_exits_zero(demo_repo: Path) -> None:
    """Its default action had killed the server without a drain (rc -1)."""
    with hangups_not_ignored():
        server = ServerProcess("--model-repository", str(demo_repo)).start()
    try:
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        assert server.process.wait(60) == 0, server.output()[-3000:]
        server.wait_for_output("shutting down")
    finally:
        server.kill()


def test_sighup_is_ignored_under_nohup(demo_repo: Path) -> None:
    """A hang-up the server was started to ignore (nohup passes SIGHUP ignored) stopped it once
    SIGHUP drained: the handler replaced the ignoring."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited by the child, as nohup does
    try:
        server = ServerProcess("--model-repository", str(demo_repo)).start()
    finally:
        signal.signal(signal.SIGHUP, previous)
    try:
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            # Still serving after it: a drain turns ServerReady false at once.
            assert all(stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready for _ in range(3))
        assert server.process.poll() is None
        assert server.terminate() == 0
    finally:
        server.kill()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("how", [signal.SIGHUP, signal.SIGKILL])
def test_workers_do_not_outlive_a_parent_hung_up_or_killed(demo_repo: Path, how: signal.Signals) -> None:
    """SIGHUP killed the parent without a drain, and a SIGKILLed parent left its workers serving
    on the port (a restart found it taken). SIGHUP now drains; a dead parent's workers get SIGTERM."""
    with hangups_not_ignored():
        server = ServerProcess("--model-repository", str(demo_repo), "--workers", "2").start()
    workers: list[int] = []
    try:
        assert server.process is not None
        workers = children_of(server.process.pid)
        assert len(workers) == 2, workers
        server.process.send_signal(how)
        code = server.process.wait(60)
        assert code == (0 if how == signal.SIGHUP else -signal.SIGKILL), server.output()[-3000:]
        wait_until(lambda: not any(alive(w) for w in workers), "the workers to exit", timeout_s=60)
    finally:
        server.kill()
        for worker in workers:
            if alive(worker):
                os.kill(worker, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_a_sigterm_during_start_up_stops_the_workers_and_exits_zero(demo_repo: Path) -> None:
    command = [sys.executable, "-m", "server", "serve", "--model-repository", str(demo_repo),
               "--workers", "2", "--port", "0", "--metrics-port", "0"]  # fmt: skip
    parent = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    workers: list[int] = []
    try:
        # As soon as both workers exist (read from /proc, not assumed after a sleep), long before
        # they have loaded their models.
        wait_until(lambda: len(children_of(parent.pid)) == 2, "the workers to be spawned", timeout_s=60)
        workers = children_of(parent.pid)
        parent.send_signal(signal.SIGTERM)
        out, _ = parent.communicate(timeout=120)
        assert parent.returncode == 0, out[-3000:]
        assert "sluiceway ready" not in out
        wait_until(lambda: not any(alive(w) for w in workers), "the workers to exit", timeout_s=60)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for worker in workers:
            if alive(worker):
                os.kill(worker, signal.SIGKILL)


IDENTITY_IO = (
    'backend: "identity"\nmax_batch_size: 8\n'
    'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
    'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
)
# 60 warm-up runs of 500 ms: a load of 30 s, stopped between two runs.
SLOW_WARMUP = (
    'parameters { key: "execute_delay_ms" value: { string_value: "500" } }\n'
    'model_warmup [ { name: "w" batch_size: 1 count: 60 inputs { key: "INPUT0" '
    "value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]\n"
)


def test_a_sigterm_while_models_load_stops_the_loading(tmp_path: Path) -> None:
    # The server loaded every model first (and printed its ready line) and only then shut down:
    # a pod's SIGTERM waited for the whole load, ~10 s past a 5 s grace in one try.
    for name, extra in (("a_fast", ""), ("b_slow", SLOW_WARMUP)):
        (tmp_path / "repo" / name / "1").mkdir(parents=True)
        (tmp_path / "repo" / name / "config.pbtxt").write_text(f'name: "{name}"\n{IDENTITY_IO}{extra}')
    command = [sys.executable, "-m", "server", "serve", "--model-repository", str(tmp_path / "repo"),
               "--port", "0", "--metrics-port", "0", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    server = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert server.stdout is not None
        seen = []
        for line in server.stdout:  # a_fast is loaded before b_slow (by name): b_slow is warming up
            seen.append(line)
            if "model a_fast ready" in line:
                break
        else:
            pytest.fail("the server exited before loading a_fast:\n" + "".join(seen[-30:]))
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=120)
        assert server.returncode == 0, out[-3000:]
        assert "shutting down during start-up" in out
        assert "sluiceway ready" not in out and "model b_slow ready" not in out
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
