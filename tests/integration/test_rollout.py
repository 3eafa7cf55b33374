"""Rollout over a real server: weighted and sticky routing, an explicit version winning, shadow
traffic compared and never returned, shadow shed while the candidate is stuck, automatic rollback
of a failing and of a slow version, and the `sluiceway rollout` command.

Each test has a model of its own (its versions are `y = k * x` with k = the version number, so an
answer says which version computed it). Faults hit one version only (`fault_versions`).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from protos import admin_pb2 as apb
from protos import admin_pb2_grpc as apb_grpc
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.certs import write_tokens
from tests.support.models import scale_model
from tests.support.server_process import REPO_ROOT, ServerProcess, wait_until

MAX_REQUESTS = 2000  # every load loop below stops here at the latest


def params(**values: str) -> str:
    return "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items()
    )


BASE = """
max_batch_size: 8
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
version_policy { all { } }
"""
FAILING = {"fault_versions": "2", "fault_raise_every": "2"}
MODELS = {
    "split": params(traffic_weights="1:80,2:20"),
    "sticky": params(traffic_weights="1:50,2:50", traffic_sticky_key="user_id"),
    # Bounds the test's 100 copies cannot reach, however slowly the candidate runs beside another
    # test worker: dropping copies under pressure is the design, and `shed` tests it.
    "shadowed": params(traffic_weights="1:100", shadow_version="2", shadow_fraction="1",
                       shadow_timeout_ms="30000", shadow_max_queue="100", shadow_max_in_flight="100"),
    "shed": params(traffic_weights="1:100", shadow_version="2", shadow_fraction="1",
                   shadow_timeout_ms="60000", shadow_max_queue="0", shadow_max_in_flight="4",
                   fault_versions="2", fault_hang_every="1", fault_hang_s="60", run_timeout_s="120"),
    "failing": params(traffic_weights="1:50,2:50", rollback_window_s="0.5", rollback_min_requests="20",
                      rollback_error_margin="0.1", **FAILING),
    "slow": params(traffic_weights="1:50,2:50", rollback_window_s="1", rollback_min_requests="10",
                   rollback_latency_margin="1", fault_versions="2", fault_hang_every="1",
                   fault_hang_s="0.35"),
    "canary": params(traffic_weights="1:90,2:10"),
    "badpolicy": params(traffic_weights="1:50,7:50"),
    "stepped": params(traffic_weights="1:50,2:50"),  # the step model of the ensemble `ens`
    "forged": params(traffic_weights="1:50,2:50"),
}  # fmt: skip
# An ensemble whose one step names no version of `stepped`: routed by its traffic policy.
ENSEMBLE = """
platform: "ensemble"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [ { model_name: "stepped" model_version: -1
    input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } } ] }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("rollout")
    for name, extra in MODELS.items():
        for version in (1, 2):
            (repo / name / str(version)).mkdir(parents=True)
            scale_model(repo / name / str(version) / "model.onnx", float(version))
        (repo / name / "config.pbtxt").write_text(BASE + extra)
    (repo / "ens" / "1").mkdir(parents=True)
    (repo / "ens" / "config.pbtxt").write_text(ENSEMBLE)
    args = ["--model-repository", str(repo), "--allow-fault-injection", "--shutdown-grace-s", "1"]
    with ServerProcess(*args) as process:
        yield process


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def admin(channel: grpc.Channel) -> apb_grpc.AdminStub:
    return apb_grpc.AdminStub(channel)


X = np.arange(8, dtype=np.float32).reshape(2, 4) + 1


def request(
    model: str, request_id: str = "", version: str = "", user: str | None = None
) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(
        model_name=model,
        model_version=version,
        id=request_id,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[2, 4])],
        raw_input_contents=[X.tobytes()],
    )
    if user is not None:
        req.parameters["user_id"].string_param = user
    return req


def served_by(answer: pb.ModelInferResponse) -> int:
    """Which version computed the answer: its y / x (and the version it says)."""
    y = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(2, 4)
    k = round(float(y[0, 0] / X[0, 0]))
    assert np.array_equal(y, X * k) and answer.model_version == str(k), (answer.model_version, y)
    return k


def status(admin: apb_grpc.AdminStub, model: str) -> apb.RolloutStatusResponse:
    answer: apb.RolloutStatusResponse = admin.RolloutStatus(apb.RolloutStatusRequest(model=model), timeout=30)
    return answer


def weights(s: apb.RolloutStatusResponse) -> dict[int, int]:
    return {v.version: v.weight for v in s.versions}


def test_a_weighted_split_is_within_five_sigma(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    n, p = 2000, 0.2
    counts = Counter(served_by(stub.ModelInfer(request("split", f"r{i}"), timeout=30)) for i in range(n))
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(counts[2] - n * p) <= 5 * sigma, counts
    assert counts[1] + counts[2] == n


def test_an_explicit_version_always_wins(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    for version in ("1", "2"):
        for i in range(50):
            assert served_by(stub.ModelInfer(request("split", f"e{i}", version=version), timeout=30)) == int(
                version
            )


def test_sticky_routing_keeps_a_key_on_one_version_and_spreads_keys(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    for user in ("alice", "bob", "carol"):
        seen = {
            served_by(stub.ModelInfer(request("sticky", f"{user}{i}", user=user), timeout=30))
            for i in range(20)
        }
        assert len(seen) == 1, (user, seen)  # whatever the request id
    spread = Counter(
        served_by(stub.ModelInfer(request("sticky", user=f"user-{i}"), timeout=30)) for i in range(200)
    )
    assert spread[1] > 0 and spread[2] > 0, spread


def test_a_sticky_key_of_the_wrong_type_is_refused_naming_it(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    req = request("sticky")
    req.parameters["user_id"].bool_param = True
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in (err.value.details() or "")


def metrics(server: ServerProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as answer:
        return str(answer.read().decode())


def test_shadow_answers_are_compared_and_never_returned(
    stub: pb_grpc.GRPCInferenceServiceStub, admin: apb_grpc.AdminStub, server: ServerProcess
) -> None:
    for i in range(100):
        assert served_by(stub.ModelInfer(request("shadowed", f"s{i}"), timeout=30)) == 1

    def settled(s: apb.ShadowFigures) -> int:
        return int(s.compared + s.errors + s.shed + s.dropped)

    wait_until(lambda: settled(status(admin, "shadowed").shadow) >= 100, "100 shadow outcomes")
    s = status(admin, "shadowed").shadow
    assert s.version == 2 and s.mirrored == 100 and s.compared == 100, s
    assert s.max_abs_diff == pytest.approx(float(X.max()))  # 2x - x
    assert s.argmax_rows == 200 and s.argmax_agree == 200  # scaling keeps the argmax
    assert s.shadow_p99_ms > 0 and s.stable_p99_ms > 0
    counts = {v.version: v.requests for v in status(admin, "shadowed").versions}
    assert counts == {1: 100, 2: 0}  # copies are not requests of version 2
    text = metrics(server)
    assert 'sluiceway_shadow_requests{model="shadowed",outcome="compared",version="2"} 100.0' in text
    assert 'sluiceway_shadow_argmax_agreement{model="shadowed",version="2"} 1.0' in text


def test_shadow_is_shed_while_the_candidate_is_stuck_and_the_stable_path_is_not(
    stub: pb_grpc.GRPCInferenceServiceStub, admin: apb_grpc.AdminStub
) -> None:
    # Version 2 hangs on every run: the copies submitted never finish, so once 4 are pending
    # (shadow_max_in_flight), or one waits in its queue (shadow_max_queue 0), the rest are never
    # submitted; every caller is answered by version 1 all along.
    for i in range(60):
        assert served_by(stub.ModelInfer(request("shed", f"h{i}"), timeout=30)) == 1
    s = status(admin, "shed").shadow
    assert s.compared == 0 and 1 <= s.mirrored <= 4 and s.mirrored + s.dropped == 60, s


def drive(stub: pb_grpc.GRPCInferenceServiceStub, admin: apb_grpc.AdminStub, model: str) -> Counter[str]:
    """Requests from 8 threads until version 2 has weight 0 (or MAX_REQUESTS); outcomes by version."""
    outcomes: Counter[str] = Counter()

    def one(i: int) -> str:
        try:
            return str(served_by(stub.ModelInfer(request(model, f"{model}{i}"), timeout=60)))
        except grpc.RpcError as err:
            return err.code().name

    with ThreadPoolExecutor(8) as pool:
        sent = 0
        while sent < MAX_REQUESTS and weights(status(admin, model))[2] > 0:
            outcomes.update(pool.map(one, range(sent, sent + 40)))
            sent += 40
    return outcomes


def test_a_failing_version_is_rolled_back(
    stub: pb_grpc.GRPCInferenceServiceStub, admin: apb_grpc.AdminStub, server: ServerProcess
) -> None:
    outcomes = drive(stub, admin, "failing")
    s = status(admin, "failing")
    assert weights(s) == {1: 50, 2: 0}, (outcomes, s)
    assert s.events[0].version == 2 and s.events[0].trigger == "auto" and "error rate" in s.events[0].reason
    assert s.rollbacks == 1 and s.source == "rollback"
    assert outcomes["INTERNAL"] > 0, outcomes  # version 2's injected failures, before the rollback
    after = Counter(
        served_by(stub.ModelInfer(request("failing", f"after{i}"), timeout=30)) for i in range(50)
    )
    assert after == {1: 50}
    server.wait_for_output("model failing version 2 rolled back (auto): error rate")
    text = metrics(server)
    counted = 'sluiceway_rollbacks_total{model="failing",trigger="auto",version="2"} 1.0'
    assert counted in text, [line for line in text.splitlines() if "rollback" in line]


def test_a_slow_version_is_rolled_back(
    stub: pb_grpc.GRPCInferenceServiceStub, admin: apb_grpc.AdminStub
) -> None:
    outcomes = drive(stub, admin, "slow")
    s = status(admin, "slow")
    assert weights(s) == {1: 50, 2: 0}, (outcomes, s)
    assert "p99 latency" in s.events[0].reason and s.events[0].trigger == "auto"
    assert set(outcomes) <= {"1", "2"}  # slow, never failed


def test_an_ensemble_step_naming_no_version_is_routed_and_a_rollback_holds_for_it(
    stub: pb_grpc.GRPCInferenceServiceStub, admin: apb_grpc.AdminStub
) -> None:
    """Every ensemble request went to the step model's newest version, past its split and past a
    rollback of that version: a rolled-back canary kept all the ensemble's traffic."""

    def computed_by(answer: pb.ModelInferResponse) -> int:
        y = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(2, 4)
        return round(float(y[0, 0] / X[0, 0]))

    split = Counter(computed_by(stub.ModelInfer(request("ens", f"n{i}"), timeout=30)) for i in range(200))
    assert split[1] > 40 and split[2] > 40 and split[1] + split[2] == 200, split  # 5 sigma: 65..135
    admin.Rollback(apb.RollbackRequest(model="stepped", version=2, reason="bad canary"), timeout=30)
    after = Counter(computed_by(stub.ModelInfer(request("ens", f"b{i}"), timeout=30)) for i in range(50))
    assert after == {1: 50}


def test_a_policy_naming_an_unserved_version_fails_the_load(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
    bad = next(m for m in index.models if m.name == "badpolicy")
    assert bad.state == "UNAVAILABLE" and "traffic_weights" in bad.reason and "[7]" in bad.reason


def rollout_cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "rollout", *args, "--target", server.address],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "160"},
    )


def test_the_rollout_cli_shows_sets_promotes_and_rolls_back(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, admin: apb_grpc.AdminStub
) -> None:
    for i in range(20):
        stub.ModelInfer(request("canary", f"c{i}"), timeout=30)
    shown = rollout_cli(server, "status", "canary")
    assert shown.returncode == 0, shown.stderr
    assert (
        "canary: weights from config" in shown.stdout and "stable" in shown.stdout and "90.0%" in shown.stdout
    )
    assert "automatic rollback: off" in shown.stdout

    set_ = rollout_cli(server, "set", "canary", "1:50,2:50")
    assert set_.returncode == 0 and "weights from admin" in set_.stdout, set_.stderr
    assert weights(status(admin, "canary")) == {1: 50, 2: 50}

    back = rollout_cli(server, "rollback", "canary", "2", "--reason", "bad canary")
    assert back.returncode == 0 and "rolled back (manual): bad canary" in back.stdout, back.stderr
    assert weights(status(admin, "canary")) == {1: 50, 2: 0}

    promoted = rollout_cli(server, "promote", "canary", "2")
    assert promoted.returncode == 0, promoted.stderr
    assert weights(status(admin, "canary")) == {1: 0, 2: 100}
    assert {served_by(stub.ModelInfer(request("canary", f"p{i}"), timeout=30)) for i in range(20)} == {2}

    only = rollout_cli(server, "rollback", "canary", "2")
    assert only.returncode == 1 and "FAILED_PRECONDITION" in only.stderr and "only version" in only.stderr
    unknown = rollout_cli(server, "promote", "canary", "9")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr and "[9]" in unknown.stderr
    bad = rollout_cli(server, "set", "canary", "1:x")
    assert bad.returncode == 2 and "VERSION:WEIGHT" in bad.stderr


def test_a_rollback_reason_cannot_write_log_lines_and_the_cli_bounds_versions(server: ServerProcess) -> None:
    back = rollout_cli(server, "rollback", "forged", "2", "--reason", "ok\nCRITICAL forged: line\r")
    assert back.returncode == 0, back.stderr
    server.wait_for_output("model forged version 2 rolled back")
    [line] = [line for line in server.lines if "model forged version 2 rolled back" in line]
    assert line.rstrip().endswith("ok CRITICAL forged: line"), line  # one line, the newline a space
    assert not [line for line in server.lines if line.startswith("CRITICAL forged")]
    for action in ("promote", "rollback"):
        huge = rollout_cli(server, action, "forged", "99999999999999999999")
        assert huge.returncode == 2 and "out of range" in huge.stderr and "Traceback" not in huge.stderr


INFER_TOKEN = "infer-rollout-5a6b7c8d9e0f1a2b"
ADMIN_TOKEN = "admin-rollout-0f1e2d3c4b5a6978"


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("rollout-auth")
    for version in (1, 2):
        (repo / "canary" / str(version)).mkdir(parents=True)
        scale_model(repo / "canary" / str(version) / "model.onnx", float(version))
    (repo / "canary" / "config.pbtxt").write_text(BASE + MODELS["canary"])
    tokens = write_tokens(tmp_path_factory.mktemp("rollout-secrets") / "tokens", INFER_TOKEN, ADMIN_TOKEN)
    with ServerProcess("--model-repository", str(repo), "--auth-tokens-file", str(tokens)) as process:
        yield process


def test_the_admin_rpcs_need_the_admin_scope(token_server: ServerProcess) -> None:
    with grpc.insecure_channel(token_server.address) as channel:
        admin = apb_grpc.AdminStub(channel)
        calls = [
            (admin.RolloutStatus, apb.RolloutStatusRequest(model="canary")),
            (admin.SetWeights, apb.SetWeightsRequest(model="canary", weights={1: 90, 2: 10})),
            (admin.Promote, apb.PromoteRequest(model="canary", version=1)),
            (admin.Rollback, apb.RollbackRequest(model="canary", version=2)),
        ]
        for call, message in calls:
            for metadata, code in (
                (None, grpc.StatusCode.UNAUTHENTICATED),
                ((("authorization", f"Bearer {INFER_TOKEN}"),), grpc.StatusCode.PERMISSION_DENIED),
            ):
                with pytest.raises(grpc.RpcError) as err:
                    call(message, timeout=30, metadata=metadata)
                assert err.value.code() == code, (message, err.value.details())
            call(message, timeout=30, metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),))  # answered
    refused = rollout_cli(token_server, "status", "canary", "--token", INFER_TOKEN)
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr and "'admin'" in refused.stderr
    shown = rollout_cli(token_server, "status", "canary", "--token", ADMIN_TOKEN)
    assert shown.returncode == 0 and "canary: weights from" in shown.stdout, shown.stderr


def test_a_stream_is_routed_as_unary_calls_are(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    ids = [f"stream-{i}" for i in range(100)]
    unary = {i: served_by(stub.ModelInfer(request("split", i), timeout=30)) for i in ids}
    answers = stub.ModelStreamInfer(iter([request("split", i) for i in ids]), timeout=60)
    streamed = {}
    for answer in answers:
        assert not answer.error_message, answer.error_message
        streamed[answer.infer_response.id] = served_by(answer.infer_response)
    assert streamed == unary and set(unary.values()) == {1, 2}
