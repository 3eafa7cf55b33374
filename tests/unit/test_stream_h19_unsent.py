"""A superseded frame's answer never written counts once, as `frame_dropped`, in the statistics
its drop was counted in; refusals of no model stay counted in neither (Unsent)."""

from __future__ import annotations

from batcher.stats import ModelStats
from protos import grpc_service_pb2 as pb
from server.protocol.latest_frame import dropped_response
from server.protocol.stream_unsent import Unsent


def test_each_answer_kind_unsent_is_counted_once_where_its_outcome_was() -> None:
    stats = ModelStats()
    ledger = Unsent()
    ledger.ended("stalled")
    request = pb.ModelInferRequest(model_name="m", id="f1")
    ledger.drop_answer(stats, dropped_response(request))  # superseded: in `dropped`
    ledger.drop_answer(stats, pb.ModelStreamInferResponse(infer_response=pb.ModelInferResponse(id="ok")))
    ledger.drop_answer(stats, pb.ModelStreamInferResponse(error_message="INVALID_ARGUMENT: x"))
    ledger.drop_answer(None, pb.ModelStreamInferResponse(error_message="NOT_FOUND: no model"))
    assert {k: n for k, n in stats.unsent.items() if n} == {"stalled": 2, "frame_dropped": 1}
    assert (ledger.successes, ledger.failures, ledger.superseded, ledger.uncounted) == (1, 1, 1, 1)
    line = ledger.line("ipv4:127.0.0.1:1", None, 2.0)
    assert "ended with 4 answers not written (1 counted successes, 1 counted failures, 1 counted in " in line
    assert "neither: refusals of no model; 1 frames superseded, latest_frame_wins)" in line
    assert '2 counted in sluiceway_stream_answers_dropped_total{reason="stalled"}' in line
    assert '1 in sluiceway_stream_answers_dropped_total{reason="frame_dropped"}' in line


def test_a_line_without_superseded_frames_names_no_frame_dropped_counter() -> None:
    ledger = Unsent()
    ledger.ended("cancelled")
    ledger.drop(ModelStats(), success=True)
    assert "frame_dropped" not in ledger.line("ipv4:127.0.0.1:1", None, 2.0)
