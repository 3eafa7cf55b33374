"""RepositoryIndex lists the repository's model directories and the models loaded, as Triton's
does, and nothing else: a name sent only with `file:` uploads leaves it once unloaded or failed
(each had stayed "unloaded" for good: 1,000 names, 1,006 entries), and unloading a `--load-model`
name that is not in the repository drops it (it was relabelled "unloaded"), answering OK as
Triton answers an unload of a model it does not know."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import NO_RETRY, Client, InvalidArgument
from tests.integration.client_fixtures import features
from tests.integration.test_repository_control import index
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

UPLOADS = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_repo: Path) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("index-bounds") / "repo"
    mlp = demo_repo / "mlp"
    write_model(repo, "mlp", mlp / "1" / "model.onnx", (mlp / "config.pbtxt").read_text())
    write_model(
        repo,
        "spare",
        mlp / "1" / "model.onnx",
        (mlp / "config.pbtxt").read_text().replace('"mlp"', '"spare"'),
    )
    args = ("--model-repository", str(repo), "--model-control-mode", "explicit")
    with ServerProcess(*args, "--load-model", "mlp", "--load-model", "ghost") as server:
        yield server


def test_names_sent_only_as_uploads_leave_the_index_once_not_loaded(
    server: ServerProcess, demo_repo: Path
) -> None:
    onnx = (demo_repo / "mlp" / "1" / "model.onnx").read_bytes()
    config = json.dumps({"max_batch_size": 2})
    with Client(server.address, retry=NO_RETRY) as client:
        for number in range(UPLOADS):
            client.load_model(f"sent{number}", config=config, files={"1/model.onnx": onnx})
            assert index(server.address)[f"sent{number}"][0][1] == "READY"  # listed while loaded
            assert client.infer(f"sent{number}", {"features": features(1)})
            client.unload_model(f"sent{number}")
        with pytest.raises(InvalidArgument, match="not a readable ONNX model"):
            client.load_model("broken", config=config, files={"1/model.onnx": b"not onnx"})
        client.unload_model("spare")  # a repository model stays listed, unloaded
    shown = index(server.address)
    assert not {name for name in shown if name.startswith("sent") or name == "broken"}, shown
    assert shown["spare"] == [("", "UNAVAILABLE", "unloaded")]


def test_unloading_a_name_the_repository_lacks_answers_ok_and_drops_it(server: ServerProcess) -> None:
    with Client(server.address, retry=NO_RETRY) as client:
        assert "--load-model names 'ghost'" in index(server.address)["ghost"][0][2]
        assert not client.server_ready()  # a --load-model name that is not there: unready, as at start
        client.unload_model("ghost")
        client.unload_model("never-heard-of")  # Triton: "Unload non-existing model, nothing should happen"
        shown = index(server.address)
        assert "ghost" not in shown and "never-heard-of" not in shown, shown
        assert client.server_ready()
