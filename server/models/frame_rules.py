"""What a stream needs to know of a lazy model that is not loaded, read from its config: its frames
that wait for its load take part in latest-frame-wins (server/protocol/latest_frame.py) and keep its
`preserve_ordering` answer order (server/protocol/stream_order.py) as the loaded model's frames do.
They had all been computed (the model's setting and a request's `true` were unknown without a
loaded version), in any answer order, and a request's `true` for a sequence model was ignored where
the loaded model refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from protos import model_config_pb2 as mc
from server.models.config import ConfigError, latest_frame_wins
from server.models.ensemble_config import is_ensemble
from server.models.versions import ModelVersion


@dataclass(frozen=True, slots=True)
class FrameRules:
    """A model's latest-frame-wins setting (named as ModelVersion's), what it is when a request's
    `true` is refused ("a sequence model", "an ensemble"; "": taken), and its
    `dynamic_batching.preserve_ordering` (named as ModelVersion's)."""

    latest_frame_wins: bool
    refused_for: str = ""
    preserve_ordering: bool = False


def refused_for(served: ModelVersion | FrameRules) -> str:
    """What `served` is when latest-frame-wins is refused for it ("": it takes part)."""
    if isinstance(served, FrameRules):
        return served.refused_for
    if served.ensemble is not None:
        return "an ensemble"
    return "a sequence model" if served.sequences is not None else ""


def config_rules(config: mc.ModelConfig, where: str) -> FrameRules | None:
    """The rules `config`'s load would serve by; None when its load refuses the setting (the load
    says why: its frames then wait for it as any request)."""
    try:
        wins = latest_frame_wins(config, where)
    except ConfigError:
        return None
    if is_ensemble(config):
        return FrameRules(wins, "an ensemble")
    refused = "a sequence model" if config.HasField("sequence_batching") else ""
    return FrameRules(wins, refused, config.dynamic_batching.preserve_ordering)


def version_rules(served: ModelVersion) -> FrameRules:
    """The rules a loaded version serves by (kept for its next load once it is evicted)."""
    return FrameRules(served.latest_frame_wins, refused_for(served), served.preserve_ordering)
