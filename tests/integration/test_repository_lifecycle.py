"""Repository control under an edge operator's mistakes, against a real server: a load whose
caller gives up, a reload that fails on one version, an unbounded thread count in a client's
config, and load failures counted on /metrics."""

from __future__ import annotations

import json
import os
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tritonclient.grpc as tg

from clients import NO_RETRY, Client, DeadlineExceeded, InvalidArgument, Unavailable
from tests.integration.client_fixtures import features
from tests.support.procfs import thread_count
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until

EXPLICIT = ("--model-control-mode", "explicit")
# Twelve instances of two threads each (onnxruntime's pool has one thread of its own per session).
TWELVE = """instance_group [ { count: 12 kind: KIND_CPU } ]
version_policy { all { } }
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
"""


@pytest.fixture()
def repo(demo_repo: Path, tmp_path: Path) -> Path:
    """`mlp` (version 1), and `twin`: two versions of mlp, twelve instances each."""
    repo = tmp_path / "repo"
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    write_model(repo, "mlp", mlp, (demo_repo / "mlp" / "config.pbtxt").read_text())
    write_model(repo, "twin", mlp, 'name: "twin"\nmax_batch_size: 8\n' + TWELVE)
    (repo / "twin" / "2").mkdir()
    (repo / "twin" / "2" / "model.onnx").write_bytes(mlp.read_bytes())
    return repo


def loads_failed(server: ServerProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    [line] = [x for x in text.splitlines() if x.startswith("sluiceway_model_load_failures_total ")]
    return float(line.split()[1])


def test_a_load_whose_caller_gives_up_still_completes(repo: Path, tmp_path: Path) -> None:
    """The load ran inside the RPC's task: a deadline shorter than the load stopped it halfway, the
    versions it had started leaked, and the model never loaded however often it was retried.

    The load waits at a gate (`fault_load_gate`, a named pipe) until the caller has given up, so
    the deadline falls inside it whatever the machine's speed (it had rested on 40 instances
    taking longer than 50 ms); 3 s only bounds the call's way to the server."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    held = {"max_batch_size": 8, "instance_group": [{"count": 2, "kind": "KIND_CPU"}]}
    held["parameters"] = {"fault_load_gate": {"string_value": str(gate)}}
    args = ("--model-repository", str(repo), *EXPLICIT, "--allow-fault-injection")
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client:
        with pytest.raises(DeadlineExceeded):
            client.load_model("mlp", config=json.dumps(held), timeout_s=3)
        server.wait_for_output("model mlp: load held until")  # the load is at the gate
        assert not client.model_ready("mlp")
        gate.open("wb").close()  # let the load go on, its caller gone
        wait_until(lambda: client.model_ready("mlp"), "the load to complete after its caller left")
        assert client.infer("mlp", {"features": features(2)})


def test_a_reload_that_fails_on_one_version_lets_the_others_go(repo: Path) -> None:
    """Versions load newest first; when an older one failed, the newer ones already started kept
    their sessions, batchers and threads for ever (63 MiB and a thread per try on resnet)."""
    args = ("--model-repository", str(repo), *EXPLICIT, "--load-model", "twin")
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client:
        pid = server.process.pid
        base = thread_count(pid)
        broken = repo / "twin" / "1" / "model.onnx"
        broken.unlink()  # a link to the shared demo model: never write through it
        broken.write_bytes(b"not an onnx model")
        for _ in range(3):
            with pytest.raises(InvalidArgument):
                client.load_model("twin")
        assert client.infer("twin", {"features": features(1)})  # the old versions still serve
        wait_until(
            lambda: client.server_live() and thread_count(pid) <= base + 2,
            "the versions the failed reloads started to let their threads go",
            timeout_s=30,
        )
        assert loads_failed(server) == 3


def test_a_clients_config_cannot_ask_for_unbounded_threads(repo: Path) -> None:
    """intra_op_thread_count 2000 in a RepositoryModelLoad config started 2,000 threads."""
    args = ("--model-repository", str(repo), *EXPLICIT, "--load-model", "mlp")
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client:
        config = {"max_batch_size": 8, "parameters": {"intra_op_thread_count": {"string_value": "2000"}}}
        with pytest.raises(InvalidArgument, match=r"intra_op_thread_count.*2000.*at most 256"):
            client.load_model("mlp", config=json.dumps(config))
        assert client.infer("mlp", {"features": features(1)})  # the loaded version still serves


SLOW = """max_batch_size: 1
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "fault_hang_every" value: { string_value: "1" } }
parameters { key: "fault_hang_s" value: { string_value: "0.3" } }
"""


def pending(server: ServerProcess, model: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    prefix = f'nv_inference_pending_request_count{{model="{model}",version="1"}} '
    return sum(float(x[len(prefix) :]) for x in text.splitlines() if x.startswith(prefix))


def test_a_reload_hands_what_is_still_queued_to_the_new_version(repo: Path, demo_repo: Path) -> None:
    """What a retired version had not computed within the grace failed UNAVAILABLE, though the
    new version was ready (12 of 20 queued behind a slow model)."""
    write_model(repo, "slow", demo_repo / "mlp" / "1" / "model.onnx", SLOW)
    args = ("--model-repository", str(repo), *EXPLICIT, "--load-model", "slow", "--allow-fault-injection",
            "--shutdown-grace-s", "0.5")  # fmt: skip
    pool = ThreadPoolExecutor(12)
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client, pool:
        answers = [
            pool.submit(client.infer, "slow", {"features": features(1)}, timeout_s=60) for _ in range(12)
        ]
        wait_until(lambda: pending(server, "slow") >= 8, "a backlog on the version to be retired")
        client.load_model("slow")  # a reload: the old version drains for 0.5 s, then hands over
        failed = [str(a.exception()) for a in answers if a.exception() is not None]
    # At most the batch running when the grace ran out is lost (its run is cancelled).
    assert len(failed) <= 1, failed


ENSEMBLE = """platform: "ensemble"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
ensemble_scheduling { step [ { model_name: "mlp" model_version: -1
    input_map { key: "features" value: "x" } output_map { key: "scores" value: "y" } } ] }
"""


def test_an_ensemble_goes_down_with_its_step_model_and_comes_back_with_it(repo: Path) -> None:
    """Unloading a step model left its ensemble READY (ModelReady and ServerReady true), and every
    request to it failed."""
    (repo / "ens" / "1").mkdir(parents=True)
    (repo / "ens" / "config.pbtxt").write_text(ENSEMBLE)
    args = ("--model-repository", str(repo), *EXPLICIT, "--load-model", "*")
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client:
        assert client.infer("ens", {"x": features(1)})
        client.unload_model("mlp")
        assert not client.model_ready("ens")
        assert client.server_ready()  # unloaded on request, as its step: by design
        with pytest.raises(Unavailable, match="step model 'mlp' is not loaded"):
            client.infer("ens", {"x": features(1)})
        client.load_model("mlp")
        assert client.model_ready("ens") and client.infer("ens", {"x": features(1)})


def test_the_poller_keeps_the_versions_that_did_not_change(repo: Path, demo_repo: Path) -> None:
    """Adding one version directory reloaded every version: version 1's statistics restarted (and
    its sequences and instances went). Only what changed loads now, as in Triton; a changed config
    still reloads them all."""
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    config = 'name: "kept"\nmax_batch_size: 8\nversion_policy { all { } }\n'
    write_model(repo, "kept", mlp, config, versions=(1, 2))
    args = ("--model-repository", str(repo), "--model-control-mode", "poll", "--repository-poll-secs", "0.3")
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client:
        for _ in range(5):
            client.infer("kept", {"features": features(1)}, version="1")

        def served(version: str) -> int:
            [stats] = client.model_statistics("kept", version=version).model_stats
            return int(stats.inference_stats.success.count)

        assert served("1") == 5
        write_model(repo, "kept", mlp, None, versions=(3,))
        wait_until(lambda: client.model_ready("kept", version="3"), "version 3 to load")
        assert served("1") == 5  # the same version 1, still serving
        server.wait_for_output("model kept ready (versions 3, 2, 1; unchanged, kept serving: 2, 1)")
        (repo / "kept" / "config.pbtxt").write_text(config + "dynamic_batching { }\n")
        wait_until(lambda: served("1") == 0, "a changed config to reload every version")


def test_an_ensemble_over_a_lazy_model_is_lazy_with_it(repo: Path, demo_repo: Path) -> None:
    """It failed to load at start (its step was not loaded, ServerReady false), and its requests
    never loaded the step: only a request to the step brought both up."""
    lazy = (demo_repo / "mlp" / "config.pbtxt").read_text() + (
        'parameters { key: "lazy_load" value: { string_value: "true" } }\n'
    )
    (repo / "mlp" / "config.pbtxt").write_text(lazy)  # the fixture's mlp, made lazy
    (repo / "ens" / "1").mkdir(parents=True)
    (repo / "ens" / "config.pbtxt").write_text(ENSEMBLE)
    with (
        ServerProcess("--model-repository", str(repo)) as server,
        Client(server.address, retry=NO_RETRY) as client,
    ):
        assert client.server_ready()  # both lazy: not loaded by design
        assert not client.model_ready("ens") and not client.model_ready("mlp")
        assert client.infer("ens", {"x": features(2)})  # loads mlp, then ens
        assert client.model_ready("ens") and client.model_ready("mlp")
        server.wait_for_output("model ens: loading its step model mlp first (lazy_load)")


def test_an_ensemble_pinned_to_a_version_its_step_no_longer_serves_goes_down_and_comes_back(
    repo: Path, demo_repo: Path
) -> None:
    """A reload of the step model without the version a step names (a version policy changed, a
    new version past `latest { num_versions: 1 }`) left the ensemble READY, its health and
    ServerReady true, and every request failed UNAVAILABLE (a tester, session 53)."""
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    write_model(repo, "pair", mlp, "max_batch_size: 8\nversion_policy { all { } }\n", versions=(1, 2))
    (repo / "pinned" / "1").mkdir(parents=True)
    (repo / "pinned" / "config.pbtxt").write_text(
        ENSEMBLE.replace('model_name: "mlp" model_version: -1', 'model_name: "pair" model_version: 1')
    )
    args = ("--model-repository", str(repo), *EXPLICIT, "--load-model", "*")
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client:
        assert client.infer("pinned", {"x": features(1)})
        only_two = {"max_batch_size": 8, "version_policy": {"specific": {"versions": [2]}}}
        client.load_model("pair", config=json.dumps(only_two))
        assert client.model_ready("pair") and not client.model_ready("pinned")
        # Loaded again at once, it fails as a restart's load would: ServerReady says so.
        assert not client.server_ready()
        [entry] = [m for m in client.repository_index().models if m.name == "pinned"]
        assert "'pair' version 1 is not found" in entry.reason, entry
        with pytest.raises(Unavailable, match="'pinned'"):
            client.infer("pinned", {"x": features(1)})
        client.load_model("pair")  # the repository's config: both versions again
        assert client.model_ready("pinned") and client.infer("pinned", {"x": features(1)})
        assert client.server_ready()
        # Given a config pinning version 2, it comes back with it, not with its config.pbtxt's 1
        # (a tester, session 53).
        two = ENSEMBLE.replace('model_name: "mlp" model_version: -1', 'model_name: "pair" model_version: 2')
        client.load_model("pinned", config=json.dumps(_as_json(two)))
        client.load_model(
            "pair", config=json.dumps({**only_two, "version_policy": {"specific": {"versions": [1]}}})
        )
        assert not client.model_ready("pinned")
        client.load_model("pair")
        assert client.model_ready("pinned")
        [step] = client.model_config("pinned").ensemble_scheduling.step
        assert step.model_version == 2, step


def test_an_ensemble_re_pinned_before_its_version_comes_serves_on_when_it_does(
    repo: Path, demo_repo: Path
) -> None:
    """The operator pins the ensemble's config.pbtxt to version 2, then the step model's reload
    serves 2 and no longer 1: the ensemble, stopped for the version gone, had stayed down for good
    (its reason still promising a load), where a restart serves it (a tester, session 53)."""
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    write_model(repo, "pair", mlp, "max_batch_size: 8\nversion_policy { all { } }\n", versions=(1, 2))
    (repo / "pinned" / "1").mkdir(parents=True)
    config = repo / "pinned" / "config.pbtxt"
    config.write_text(
        ENSEMBLE.replace('model_name: "mlp" model_version: -1', 'model_name: "pair" model_version: 1')
    )
    args = ("--model-repository", str(repo), *EXPLICIT, "--load-model", "*")
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client:
        only_one = {"max_batch_size": 8, "version_policy": {"specific": {"versions": [1]}}}
        client.load_model("pair", config=json.dumps(only_one))
        assert client.model_ready("pinned")
        config.write_text(config.read_text().replace("model_version: 1", "model_version: 2"))
        client.load_model(
            "pair", config=json.dumps({**only_one, "version_policy": {"specific": {"versions": [2]}}})
        )
        assert client.model_ready("pinned") and client.server_ready()
        assert client.infer("pinned", {"x": features(1)})
        [step] = client.model_config("pinned").ensemble_scheduling.step
        assert step.model_version == 2, step


def _as_json(pbtxt: str) -> dict[str, object]:
    """A config.pbtxt's text as RepositoryModelLoad's JSON `config`."""
    from google.protobuf import json_format, text_format

    from protos import model_config_pb2 as mc

    return json_format.MessageToDict(
        text_format.Parse(pbtxt, mc.ModelConfig()), preserving_proto_field_name=True
    )


def test_unload_dependents_takes_a_waiting_nested_ensemble_and_its_steps_too(
    repo: Path, demo_repo: Path
) -> None:
    """`outer` nests `pinned`, stopped for want of `pair`'s version 1: unloaded with its dependents,
    `outer` had left `pinned` waiting (and `pair` loaded), and `pinned` came back by itself once
    `pair` served 1 again, where one READY at the unload stays unloaded (a tester, session 53)."""
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    write_model(repo, "pair", mlp, "max_batch_size: 8\nversion_policy { all { } }\n", versions=(1, 2))
    pinned = ENSEMBLE.replace('model_name: "mlp" model_version: -1', 'model_name: "pair" model_version: 1')
    (repo / "pinned" / "1").mkdir(parents=True)
    (repo / "pinned" / "config.pbtxt").write_text(pinned)
    (repo / "outer" / "1").mkdir(parents=True)
    (repo / "outer" / "config.pbtxt").write_text(
        ENSEMBLE.replace('model_name: "mlp"', 'model_name: "pinned"')
        .replace('key: "features" value: "x"', 'key: "x" value: "x"')
        .replace('key: "scores" value: "y"', 'key: "y" value: "y"')
    )
    args = ("--model-repository", str(repo), *EXPLICIT, "--load-model", "outer")
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client:
        assert client.infer("outer", {"x": features(1)})
        only_two = {"max_batch_size": 8, "version_policy": {"specific": {"versions": [2]}}}
        client.load_model("pair", config=json.dumps(only_two))
        assert not client.model_ready("pinned") and not client.model_ready("outer")
        triton = tg.InferenceServerClient(server.address)
        try:
            triton.unload_model("outer", unload_dependents=True)
        finally:
            triton.close()
        states = {m.name: (m.state, m.reason) for m in client.repository_index().models}
        assert states["pinned"] == ("UNAVAILABLE", "unloaded"), states
        assert states["pair"] == ("UNAVAILABLE", "unloaded"), states
        client.load_model("pair")  # nothing waits for it now
        assert not client.model_ready("pinned") and not client.model_ready("outer")
