"""Model control modes (none, explicit, poll) and RepositoryModelLoad's `config` and `file:`
parameters, against a real server."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import NO_RETRY, Client, InvalidArgument, SluicewayError, Unavailable
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.integration.client_fixtures import features
from tests.support.procfs import thread_count
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until

MAX_REQUESTS = 200_000  # the load loop's bound; it stops as soon as the test is done


def index(address: str) -> dict[str, list[tuple[str, str, str]]]:
    """Model -> [(version, state, reason)] as RepositoryIndex shows them."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
    shown: dict[str, list[tuple[str, str, str]]] = {}
    for model in response.models:
        shown.setdefault(model.name, []).append((model.version, model.state, model.reason))
    return shown


def health_code(address: str, service: str) -> grpc.StatusCode:
    """grpc health's Check for `service`: OK, or the status it was refused with."""
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def versions(address: str, name: str) -> list[str]:
    return sorted(v for v, state, _ in index(address).get(name, []) if state == "READY")


@pytest.fixture()
def repo(demo_repo: Path, tmp_path: Path) -> Path:
    """`mlp` and `extra` (an mlp copy), version 1 each."""
    repo = tmp_path / "repo"
    mlp = demo_repo / "mlp"
    config = (mlp / "config.pbtxt").read_text()
    write_model(repo, "mlp", mlp / "1" / "model.onnx", config)
    write_model(repo, "extra", mlp / "1" / "model.onnx", config.replace('"mlp"', '"extra"'))
    return repo


@pytest.fixture()
def mlp_file(demo_repo: Path) -> Path:
    return demo_repo / "mlp" / "1" / "model.onnx"


class Traffic:
    """Requests to `mlp` (no version: the newest) from a thread until stopped; counts failures."""

    def __init__(self, address: str) -> None:
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._client = Client(address, retry=NO_RETRY)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        data = features(4)
        for _ in range(MAX_REQUESTS):
            if self._stop.is_set():
                return
            try:
                self._client.infer("mlp", {"features": data}, timeout_s=30)
                self.ok += 1
            except SluicewayError as exc:
                self.failures.append(str(exc))

    def __enter__(self) -> Traffic:
        self._thread.start()
        wait_until(lambda: self.ok > 0 or bool(self.failures), "the first answer")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        self._client.close()


@pytest.fixture()
def poll_server(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(
        "--model-repository", str(repo), "--model-control-mode", "poll", "--repository-poll-secs", "0.3"
    ) as server:
        yield server


def test_poll_mode_picks_up_a_new_version_and_a_config_change_under_load(
    poll_server: ServerProcess, repo: Path, mlp_file: Path
) -> None:
    address = poll_server.address
    with Traffic(address) as traffic:
        write_model(repo, "mlp", mlp_file, None, versions=(2,))  # latest 1: version 2 replaces 1
        wait_until(lambda: versions(address, "mlp") == ["2"], "version 2 alone")
        config = repo / "mlp" / "config.pbtxt"
        config.write_text(config.read_text() + "version_policy { all { } }\n")
        wait_until(lambda: versions(address, "mlp") == ["1", "2"], "versions 1 and 2 (the new policy)")
        served_before = traffic.ok
        wait_until(lambda: traffic.ok > served_before, "answers after the change")
    assert traffic.failures == [], traffic.failures[:5]
    print(f"{traffic.ok} requests answered across the changes, none failed")


def test_poll_mode_keeps_serving_through_a_broken_change_and_says_why(
    poll_server: ServerProcess, repo: Path
) -> None:
    address = poll_server.address
    config = repo / "mlp" / "config.pbtxt"
    good = config.read_text()
    with Traffic(address) as traffic:
        config.write_text("max_batch_size: [ this is not a config")
        wait_until(lambda: "reload failed" in index(address)["mlp"][0][2], "the reason in the index")
        version, state, reason = index(address)["mlp"][0]
        assert state == "READY" and version == "1" and "config.pbtxt" in reason
        served_before = traffic.ok
        wait_until(lambda: traffic.ok > served_before, "answers while the change is broken")
        config.write_text(good)  # fixed: loaded again, the reason goes
        wait_until(lambda: index(address)["mlp"][0][2] == "", "the reason cleared")
    assert traffic.failures == [], traffic.failures[:5]
    poll_server.wait_for_output("change not applied, the loaded versions keep serving")


def test_poll_mode_unloads_a_removed_model_and_loads_a_new_one(
    poll_server: ServerProcess, repo: Path, tmp_path: Path, mlp_file: Path
) -> None:
    address = poll_server.address
    shutil.rmtree(repo / "extra")
    wait_until(lambda: "extra" not in index(address), "extra gone from the index")
    wait_until(lambda: health_code(address, "extra") == grpc.StatusCode.NOT_FOUND, "extra gone from health")
    staged = write_model(tmp_path / "staging", "fresh", mlp_file, None)
    staged.rename(repo / "fresh")  # a whole model directory appears at once
    wait_until(lambda: versions(address, "fresh") == ["1"], "fresh loaded")
    with Client(address, retry=NO_RETRY) as client:
        assert client.infer("fresh", {"features": features(2)})
        with pytest.raises(Unavailable, match="not allowed if polling is enabled"):
            client.load_model("mlp")  # as in Triton: polling owns the repository


def test_none_mode_refuses_load_and_unload_with_tritons_words(repo: Path) -> None:
    with (
        ServerProcess("--model-repository", str(repo)) as server,
        Client(server.address, retry=NO_RETRY) as client,
    ):
        for call in (lambda: client.load_model("mlp"), lambda: client.unload_model("mlp")):
            with pytest.raises(
                Unavailable, match="explicit model load / unload is not allowed if polling is enabled"
            ):
                call()
        assert versions(server.address, "mlp") == ["1"]


def test_explicit_mode_loads_only_what_it_is_asked(repo: Path, mlp_file: Path) -> None:
    args = ("--model-repository", str(repo), "--model-control-mode", "explicit", "--load-model", "mlp")
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client:
        shown = index(server.address)
        assert shown["mlp"][0][1] == "READY"
        assert (
            shown["extra"] == [("", "UNAVAILABLE", shown["extra"][0][2])]
            and "not loaded" in shown["extra"][0][2]
        )
        assert client.server_ready()  # a model not asked for does not make the server unready
        with pytest.raises(Unavailable):
            client.infer("extra", {"features": features(1)})
        client.load_model("extra")
        assert client.infer("extra", {"features": features(1)})
        client.unload_model("mlp")
        assert index(server.address)["mlp"][0][1:] == ("UNAVAILABLE", "unloaded")
        assert client.server_ready()  # unloaded on request: as in Triton, not a reason to be unready
        client.load_model("mlp")
        assert client.server_ready() and client.infer("mlp", {"features": features(1)})


def test_explicit_mode_applies_a_config_override_and_sent_files(repo: Path, mlp_file: Path) -> None:
    args = ("--model-repository", str(repo), "--model-control-mode", "explicit")
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client:
        client.load_model("mlp", config=json.dumps({"max_batch_size": 4}))
        assert client.model_config("mlp").max_batch_size == 4  # not config.pbtxt's 128
        client.load_model(
            "sent", config=json.dumps({"max_batch_size": 2}), files={"1/model.onnx": mlp_file.read_bytes()}
        )
        assert client.model_config("sent").max_batch_size == 2
        assert client.infer("sent", {"features": features(2)})["scores"].shape == (2, 2)
        assert not (repo / "sent").exists()  # never written into the repository
        with pytest.raises(InvalidArgument, match="relative path"):
            client.load_model("sent", config="{}", files={"../../escape": b"x"})
        with pytest.raises(InvalidArgument, match="need the 'config' parameter"):
            client.load_model("sent", files={"1/model.onnx": b"x"})
        with pytest.raises(InvalidArgument, match="not a JSON ModelConfig"):
            client.load_model("mlp", config="{")
        # An override the graph refutes is named as the request's, not as the repository's file.
        bad = {"input": [{"name": "features", "data_type": "TYPE_INT8", "dims": [64]}]}
        with pytest.raises(InvalidArgument) as caught:
            client.load_model("mlp", config=json.dumps(bad))
        assert "RepositoryModelLoad parameters['config']: input 'features' data_type TYPE_INT8" in str(
            caught.value
        )
        assert "config.pbtxt" not in str(caught.value)
        # A model file from outside the version directory (as a client could ask) is refused.
        with pytest.raises(
            InvalidArgument, match="default_model_filename '/etc/hostname' must be a file name"
        ):
            client.load_model("mlp", config=json.dumps({"default_model_filename": "/etc/hostname"}))
        assert client.infer("sent", {"features": features(1)})  # refused loads changed nothing


def test_retired_instances_give_back_their_threads(repo: Path) -> None:
    # A retired instance's session (its memory and onnxruntime's threads) stayed until a full
    # garbage collection: 30 instances loaded and unloaded kept 30 threads, load after load, in a
    # demo server. Whether a collection comes between depends on the process's allocations, so the
    # deterministic check is test_ort_backend.py's (close() in a cycle with gc off); this one is
    # the end-to-end behaviour, and the bound on instances.
    args = ("--model-repository", str(repo), "--model-control-mode", "explicit", "--load-model", "mlp")
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client:
        pid = server.process.pid
        base = thread_count(pid)
        many = json.dumps({"max_batch_size": 8, "instance_group": [{"count": 12, "kind": "KIND_CPU"}]})
        for _ in range(2):
            client.load_model("mlp", config=many)  # each instance's session has threads here (2 cores)
            client.load_model("mlp", config=json.dumps({"max_batch_size": 8}))  # a reload retires them
            client.unload_model("mlp")
            client.load_model("mlp")
            # Executor threads end on their own once shut down: wait for them (a call paces each check).
            wait_until(
                lambda: client.server_live() and thread_count(pid) <= base + 2,
                "the retired instances' threads to end",
                timeout_s=30,
            )
        assert client.infer("mlp", {"features": features(1)})
        too_many = json.dumps({"instance_group": [{"count": 300, "kind": "KIND_CPU"}]})
        with pytest.raises(InvalidArgument, match=r"asks for 300 instances .*at most 256 per model"):
            client.load_model("extra", config=too_many)


def test_explicit_mode_a_broken_model_not_asked_for_leaves_the_server_ready(
    repo: Path, mlp_file: Path
) -> None:
    write_model(repo, "typo", mlp_file, 'name: "typo"\nmax_batch_sise: 8\n')
    args = ("--model-repository", str(repo), "--model-control-mode", "explicit", "--load-model", "mlp")
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client:
        [(_, state, reason)] = index(server.address)["typo"]
        assert state == "UNAVAILABLE" and "max_batch_sise" in reason  # listed, with why
        # The ready line lists what serves, then the rest by kind (it listed all three as models).
        assert "(models: mlp; not loaded: extra, typo)" in server.output()
        assert not any("Traceback" in line for line in server.lines)  # one line per bad model
        # Not asked for: a note, not an ERROR an operator's alert would page on.
        [note] = [line for line in server.lines if "model typo not loaded" in line]
        assert " INFO " in note, note
        assert client.server_ready()  # as a model not asked for, broken or not (it was false)
        with pytest.raises(InvalidArgument, match="max_batch_sise"):
            client.load_model("typo")


def test_an_upload_only_model_is_forgotten_whole_at_its_unload(repo: Path, mlp_file: Path) -> None:
    # Its lazy signature and measured footprint had been kept by name for good (~3 kB a name):
    # after the unload it is answered as a name the server never knew.
    args = ("--model-repository", str(repo), "--model-control-mode", "explicit")
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client:
        client.load_model("mlp")
        client.load_model("sent", config="{}", files={"1/model.onnx": mlp_file.read_bytes()})
        assert client.infer("sent", {"features": features(1)})
        client.unload_model("sent")
        assert "sent" not in index(server.address)

        def answers(name: str) -> list[tuple[str, str]]:
            seen = []
            with grpc.insecure_channel(server.address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                for call, request in (
                    (stub.ModelMetadata, pb.ModelMetadataRequest(name=name)),
                    (stub.ModelConfig, pb.ModelConfigRequest(name=name)),
                    (stub.ModelInfer, pb.ModelInferRequest(model_name=name)),
                ):
                    try:
                        call(request, timeout=10)
                        seen.append(("OK", ""))
                    except grpc.RpcError as err:
                        seen.append((err.code().name, (err.details() or "").replace(name, "NAME")))
            return seen

        assert answers("sent") == answers("never_was")
        assert not client.model_ready("sent")
        # grpc health too: its NOT_SERVING had stayed for good (and its record, ~250 B a name).
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.RpcError) as unknown:
                health.Check(health_pb2.HealthCheckRequest(service="sent"), timeout=10)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            watch = health.Watch(health_pb2.HealthCheckRequest(service="sent"), timeout=10)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            watch.cancel()
            mlp = health.Check(health_pb2.HealthCheckRequest(service="mlp"), timeout=10)
            assert mlp.status == health_pb2.HealthCheckResponse.SERVING  # the others' stay
