"""`--workers N` in one process, for unit tests of server/models/rollout_share.py: workers sharing
one rollout directory, each with its own Rollout (a clock the test moves), model index and
RolloutShare, over stand-in model entries whose config carries a traffic policy."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from google.protobuf import text_format

from batcher.stats import ModelStats
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.errors import ModelNotFound
from server.models.rollout import Rollout
from server.models.rollout_share import RolloutShare

POLICY = {"traffic_weights": "1:50,2:50", "rollback_window_s": "10", "rollback_min_requests": "20"}


def model_entry(
    files: str = "a", name: str = "m", policy: Mapping[str, str] = POLICY, versions: tuple[int, ...] = (1, 2)
) -> SimpleNamespace:
    """A freshly loaded ready model, its `versions` loaded from `files` (their fingerprint), with
    `policy` as its config's parameters."""
    text = "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in policy.items()
    )
    cfg = text_format.Parse(text, mc.ModelConfig())
    loaded = {
        v: SimpleNamespace(config=cfg, stats=ModelStats(), name=name, version=v, fingerprint=(files, v))
        for v in versions
    }
    return SimpleNamespace(name=name, versions=loaded, order=sorted(loaded, reverse=True), state="READY")


class Worker:
    """One worker: its rollout, its model index (`model` loaded) and its share of the directory."""

    def __init__(self, index: int, directory: Path, model: SimpleNamespace) -> None:
        self.now = [100.0]
        self.rollout = Rollout(clock=lambda: self.now[0], wall=lambda: 0.0)
        self.index: dict[str, Any] = {model.name: model}
        self.share = RolloutShare(directory, index, self)  # type: ignore[arg-type]

    def entry(self, name: str) -> Any:
        if name not in self.index:
            raise ModelNotFound(name)
        return self.index[name]

    def weights(self) -> dict[int, int] | None:
        return self.rollout.state(self.index["m"]).weights

    def submit(self, kind: str, version: int | None = None, weights: dict[int, int] | None = None) -> None:
        self.share.submit(self.index["m"], kind, version, weights or {}, "drill")

    def fail_version_2(self) -> None:
        """A window where version 2 fails half its requests: it is rolled back when the window is
        judged, at the next routed request."""
        model = self.index["m"]
        self.rollout.route(model, pb.ModelInferRequest(id="start"))
        for _ in range(30):
            model.versions[1].stats.record_success(300_000)
            model.versions[2].stats.record_success(300_000)
            model.versions[2].stats.record_failure(300_000, "BACKEND")
        self.now[0] += 10
        self.rollout.route(model, pb.ModelInferRequest(id="x"))
