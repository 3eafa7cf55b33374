"""Latest-frame-wins on a stream: a newer frame supersedes the older one still waiting.

Cameras and sensors send frames at their own pace; a stream that falls behind should compute its
newest frame, not work through a backlog. A frame takes part when its model sets the parameter
`latest_frame_wins: "true"` in config.pbtxt, or when the request carries the bool parameter
`latest_frame_wins` (which overrides the model's setting either way).

When such a frame arrives on a stream, the previous such frame of the same model (name and
version as requested) on the same stream is withdrawn if it has not started computing: still in
the batcher's queue, or not yet queued (batcher/claim.py). It is answered with no outputs and the
response parameter `frame_dropped: true`, and counted in the model's statistics (`dropped`;
`sluiceway_frames_dropped_total` on /metrics, since Triton's ModelStatistics has no such field).
A frame that a batch has already taken is computed and answered as usual. The older frame is
withdrawn only once the newer one is queued (or answered at once): a newer frame refused for its
inputs or by the queue (its deadline cannot be met, or has passed) supersedes nothing. The stream
session answers the frames of one model and version as requested in request order
(stream_order.py), so a dropped answer takes its frame's place; frames of other models do not wait
for them. Frames waiting for a lazy model's load take part by its config (frame_rules.py).
"""

from __future__ import annotations

import functools

from batcher.claim import Claim
from protos import grpc_service_pb2 as pb
from server.errors import FrameDropped, InvalidRequest
from server.models.frame_rules import FrameRules, refused_for
from server.models.versions import ModelVersion
from server.protocol.controls import LATEST_FRAME_WINS
from server.protocol.controls import latest_frame_wins as request_setting

FRAME_DROPPED = "frame_dropped"  # the response parameter of a dropped frame's answer
_SUPERSEDED = "superseded by a newer frame on this stream (latest_frame_wins)"


class LatestFrames:
    """One stream's newest waiting frame per model. Lives and dies with its stream session."""

    def __init__(self) -> None:
        # Keyed by resolvable models only, so its size is bounded by the repository, not the client.
        self._newest: dict[tuple[str, str], Claim] = {}

    def arrive(self, request: pb.ModelInferRequest, served: ModelVersion | FrameRules | None) -> Claim | None:
        """A claim for `request` when latest-frame-wins applies to it (None otherwise); the older
        frame it supersedes is withdrawn if that has not started. `served`: the version the
        request names (RequestPath.model_of), or the rules of a lazy model not loaded, read from
        its config (RequestPath.frame_rules: its frames waiting for the load take part too);
        None: no such model (`start` answers why). Raises InvalidRequest when the request's
        parameter is not a bool, or is true for a model that refuses the setting."""
        wanted = request_setting(request.parameters)
        if wanted is False or served is None:
            return None
        if wanted is None and not served.latest_frame_wins:  # the model's setting, read at load
            return None
        what = refused_for(served)
        if what:  # a load refuses the setting
            raise InvalidRequest(f"parameter '{LATEST_FRAME_WINS}' true is not supported for {what}")
        key = (request.model_name, request.model_version)
        older = self._newest.get(key)
        # The older frame is withdrawn once this one is queued (Claim.admitted), not before: a
        # newer frame refused for its inputs or its deadline had left no frame computed at all.
        supersede = None if older is None else functools.partial(older.withdraw, FrameDropped(_SUPERSEDED))
        claim = self._newest[key] = Claim(on_admitted=supersede)
        return claim


def dropped_response(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
    """The answer to a dropped frame: its id, no outputs, `frame_dropped: true`."""
    response = pb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    response.parameters[FRAME_DROPPED].bool_param = True
    return pb.ModelStreamInferResponse(infer_response=response)
