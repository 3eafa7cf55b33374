"""The sixteenth and seventeenth sessions' pure modules outside the batcher: the share directory's
JSON files (server/models/share_files.py), the rollout snapshot (server/models/rollout_snapshot.py),
an oversized frame's head (server/protocol/frame_size.py) and a stream's held bytes
(server/protocol/stream_bytes.py): the cases mutation testing found untested (tests/MUTANTS.md,
"Run of 2026-12-02 (eighteenth session)")."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from protos import grpc_service_pb2 as pb
from server.models.rollout_snapshot import (
    SOURCES,
    Snapshot,
    read_snapshot,
    snapshot_file_name,
    snapshot_of,
    write_snapshot,
)
from server.models.rollout_state import MAX_EVENTS, EventOrigin, ModelRollout, RollbackEvent
from server.models.share_files import field, is_int, is_pair, read_json_object
from server.protocol.frame_size import HEAD_MAX_BYTES, HEAD_MAX_FIELDS, oversized, request_head
from server.protocol.stream_bytes import FIRST_READS, HeldBytes, frame_bytes

# -- share_files ---------------------------------------------------------------------------------


class _Recorded(io.BytesIO):
    """A file that remembers how many bytes each read asked for."""

    def __init__(self, data: bytes, sizes: list[int | None]) -> None:
        super().__init__(data)
        self._sizes = sizes

    def read(self, size: int | None = -1, /) -> bytes:
        self._sizes.append(size)
        return super().read(size)


class _FakePath:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sizes: list[int | None] = []

    def open(self, mode: str) -> _Recorded:
        assert mode == "rb"
        return _Recorded(self.data, self.sizes)


def test_a_share_file_is_read_up_to_one_byte_past_its_bound(tmp_path: Path) -> None:
    fake = _FakePath(b'{"a": 1}' + b" " * 100)
    with pytest.raises(ValueError, match=r"^larger than 20 bytes$"):
        read_json_object(cast(Path, fake), 20)
    assert fake.sizes == [21]  # never the whole file: another process may have written anything
    exact = tmp_path / "exact.json"
    exact.write_bytes(b'{"a": 1}')
    assert read_json_object(exact, len(b'{"a": 1}')) == {"a": 1}  # exactly at the bound


def test_a_share_file_that_is_no_object_and_a_field_of_the_wrong_type_are_named(tmp_path: Path) -> None:
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ValueError) as caught:
        read_json_object(listed, 100)
    assert str(caught.value) == "not a JSON object"
    with pytest.raises(ValueError) as caught:
        field({"seq": "3"}, "seq", int)
    assert str(caught.value) == "field 'seq' is not a int"


def test_share_files_integers_and_pairs() -> None:
    assert is_int(3) and not is_int(True) and not is_int("3") and not is_int(3.0)
    assert is_pair([1, 2])
    assert not is_pair([1, 2, 3]) and not is_pair([1]) and not is_pair([1, "2"])
    assert not is_pair((1, 2)) and not is_pair("12")


# -- rollout_snapshot ----------------------------------------------------------------------------


def _snapshot(**changes: Any) -> Snapshot:
    values: dict[str, Any] = {
        "model": "m",
        "generation": "g7",
        "seq": 12,
        "weights": ((1, 30), (2, 70)),
        "source": "admin",
        "rolled_back": (3,),
        "shadow_stopped": True,
        "shadow_promoted": False,
        "events": (
            RollbackEvent(3, "auto", "p99 twice the stable's", 1700000000.5),
            RollbackEvent(2, "manual", "operator said so", 1700000001.0, EventOrigin(1, "manual", "why")),
        ),
        "rollbacks": ((3, 0, "auto", 1), (2, 1, "manual", 2)),
    }
    values.update(changes)
    return Snapshot(**values)


def test_a_snapshot_reads_back_as_written(tmp_path: Path) -> None:
    for snapshot in (_snapshot(), _snapshot(weights=None, shadow_stopped=False, shadow_promoted=True)):
        write_snapshot(tmp_path, snapshot, ("m", "g7"))
        assert read_snapshot(tmp_path / "snap-m-g7.json") == snapshot
    assert snapshot_file_name(("model-a", "gen-b")) == "snap-model-a-gen-b.json"


def _state(fraction: float | None, weights: dict[int, int] | None) -> ModelRollout:
    shadow = None if fraction is None else SimpleNamespace(policy=SimpleNamespace(fraction=fraction))
    return cast(
        ModelRollout,
        SimpleNamespace(
            entry=SimpleNamespace(name="m"),
            generation="g1",
            log_seq=4,
            weights=weights,
            source="config",
            rolled_back={2, 1},
            shadow=shadow,
            shadow_promoted=False,
            events=[],
            log_rollbacks={(1, 0, "auto"): 2},
        ),
    )


def test_a_snapshot_of_a_state_says_whether_its_shadow_was_stopped() -> None:
    assert snapshot_of(_state(0.0, {2: 1, 1: 3})).shadow_stopped is True
    assert snapshot_of(_state(0.25, None)).shadow_stopped is False
    assert snapshot_of(_state(1.0, None)).shadow_stopped is False
    assert snapshot_of(_state(None, None)).shadow_stopped is False
    taken = snapshot_of(_state(0.0, {2: 1, 1: 3}))
    assert taken.weights == ((1, 3), (2, 1)) and snapshot_of(_state(0.0, None)).weights is None
    assert (taken.rolled_back, taken.rollbacks, taken.seq) == ((1, 2), ((1, 0, "auto", 2),), 4)


EVENT: list[object] = [3, "auto", "why", 1.5, None]
COUNT: list[object] = [3, 0, "manual", 1]

# Each a field of a written snapshot replaced: the whole message of its refusal.
REFUSED: list[tuple[str, object, str]] = [
    ("weights", [[1, 2, 3]], "field 'weights' is neither null nor a list of [version, weight] pairs"),
    ("weights", {"1": 2}, "field 'weights' is neither null nor a list of [version, weight] pairs"),
    ("source", "operator", f"field 'source' is 'operator', not one of {SOURCES}"),
    ("rolled_back", [1, "2"], "field 'rolled_back' is not a list of version numbers"),
    ("shadow_stopped", 1, "field 'shadow_stopped' is not true or false"),
    ("shadow_promoted", None, "field 'shadow_promoted' is not true or false"),
    ("events", [EVENT] * (MAX_EVENTS + 1), f"field 'events' is not a list of up to {MAX_EVENTS} events"),
]
BAD_EVENTS: list[list[object]] = [
    [*EVENT, "extra"],
    EVENT[:4],
    ["3", *EVENT[1:]],
    [3, 1, *EVENT[2:]],
    [3, "auto", 2, *EVENT[3:]],
    [*EVENT[:3], "1.5", None],
    [*EVENT[:3], True, None],
    [*EVENT[:4], "origin"],
    [*EVENT[:4], [0, "manual", "r", "x"]],
    [*EVENT[:4], [0, "manual"]],
    [*EVENT[:4], ["0", "manual", "r"]],
    [*EVENT[:4], [0, "other", "r"]],
    [*EVENT[:4], [0, "auto", 5]],
]
BAD_COUNTS: list[list[object]] = [
    [3, 0, "manual", 0],
    [3, 0, "manual", -1],
    [3, 0, "other", 1],
    [3, "0", "manual", 1],
    ["3", 0, "manual", 1],
    [3, 0, "manual", 1, 9],
    [3, 0, "manual"],
    [3, 0, "manual", True],
]


def _refusal(tmp_path: Path, name: str, value: object) -> str:
    write_snapshot(tmp_path, _snapshot(), ("m", "g7"))
    path = tmp_path / "snap-m-g7.json"
    raw = json.loads(path.read_text())
    raw[name] = value
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError) as caught:
        read_snapshot(path)
    return str(caught.value)


@pytest.mark.parametrize(("name", "value", "message"), REFUSED)
def test_a_snapshot_field_written_wrongly_is_refused_by_name(
    tmp_path: Path, name: str, value: object, message: str
) -> None:
    assert _refusal(tmp_path, name, value) == message


def test_every_malformed_event_and_count_is_refused(tmp_path: Path) -> None:
    for event in BAD_EVENTS:
        message = f"field 'events' is not a list of up to {MAX_EVENTS} events"
        assert _refusal(tmp_path, "events", [EVENT, event]) == message, event
    for count in BAD_COUNTS:
        message = "field 'rollbacks' is not a list of [version, worker, kind, count] counts"
        assert _refusal(tmp_path, "rollbacks", [COUNT, count]) == message, count


# -- frame_size ----------------------------------------------------------------------------------


def test_an_oversized_message_of_another_type_keeps_its_size_and_limit() -> None:
    refused = oversized(b"\x0a\x20" + b"n" * 32, 10, pb.ModelConfigRequest)
    assert (refused.size, refused.limit, refused.head, refused.tensors) == (34, 10, None, False)


def _head_fields(count: int) -> bytes:
    """`count` head fields (count - 1 empty model names, then an id) and a tensor after them."""
    tensor: bytes = pb.ModelInferRequest(raw_input_contents=[b"x"]).SerializeToString()
    return b"\x0a\x00" * (count - 1) + b"\x1a\x01i" + tensor


def test_a_head_of_exactly_its_field_bound_is_read_one_more_is_not() -> None:
    head = request_head(_head_fields(HEAD_MAX_FIELDS))
    assert head is not None and head.id == "i"
    assert request_head(_head_fields(HEAD_MAX_FIELDS + 1)) is None


def test_a_head_ending_exactly_at_its_byte_bound_is_read() -> None:
    # id: tag (1 byte), length (2-byte varint), the id: HEAD_MAX_BYTES in all
    ident = "i" * (HEAD_MAX_BYTES - 3)
    data = pb.ModelInferRequest(id=ident, raw_input_contents=[b"x"]).SerializeToString()
    head = request_head(data)
    assert head is not None and head.id == ident
    longer = pb.ModelInferRequest(id=ident + "i", raw_input_contents=[b"x"]).SerializeToString()
    assert request_head(longer) is None


def test_multi_byte_lengths_and_varints_that_do_not_end() -> None:
    for n in (200, 300, 20_000 // 3):  # lengths of 2 varint bytes (high bits in the second)
        data = pb.ModelInferRequest(model_name="m" * n, id="x", raw_input_contents=[b"x"]).SerializeToString()
        head = request_head(data)
        assert head is not None and (head.model_name, head.id) == ("m" * n, "x")
    assert request_head(b"\x0a\x80") is None  # a length cut short
    # a tag of 11 varint bytes: no field (varints end within 10): nothing before it to read
    assert request_head(b"\x80" * 10 + b"\x00") == pb.ModelInferRequest()
    assert request_head(b"\x80" * 9 + b"\x00") is None  # a tag of 10 bytes: field 0, not ours


# -- stream_bytes --------------------------------------------------------------------------------


async def _blocks(held: HeldBytes) -> bool:
    """Whether `room()` waits (it returns within its first step when there is room)."""
    task = asyncio.ensure_future(held.room())
    await asyncio.sleep(0)  # one turn: the task's first step, not a wait for time
    waiting = not task.done()
    task.cancel()
    return waiting


def _request(nbytes: int) -> pb.ModelInferRequest:
    """A request the stream charges `nbytes` (its id's characters)."""
    request = pb.ModelInferRequest(id="i" * nbytes)
    assert frame_bytes(request) == nbytes
    return request


async def test_a_stream_holding_exactly_its_bound_reads_no_more() -> None:
    held = HeldBytes(100)
    held.read(_request(50))  # charged its own bytes twice before any answer
    assert held.held == 100 and await _blocks(held)


async def test_before_a_first_answer_exactly_first_reads_requests_are_read() -> None:
    held = HeldBytes(10**9)
    requests = [_request(1) for _ in range(FIRST_READS)]  # kept: the stream keys them by id
    for request in requests[:-1]:
        held.read(request)
    assert not await _blocks(held)
    held.read(requests[-1])
    assert await _blocks(held)


async def test_an_answer_sets_the_guess_and_a_later_small_one_halves_it() -> None:
    held = HeldBytes(10**9)
    first = _request(10)
    held.read(first)
    assert held.answered(first, 1001) == 1011  # not refused by default: its size is the guess
    held.written(1011)
    second = _request(0)
    held.read(second)
    assert held.held == 1001
    assert held.answered(second, 0) == 0
    third = _request(0)
    held.read(third)
    assert held.held == 500 and isinstance(held.held, int)  # 1001 // 2


def test_answers_of_requests_never_read_or_none() -> None:
    held = HeldBytes(1000)
    assert held.answered(None, None) == 0 and held.held == 0
    assert held.answered(None, 100) == 100 and held.held == 100
    held.written(100)
    assert held.answered(_request(7), 40) == 40 and held.held == 40  # not read: nothing charged
    unbounded = HeldBytes(None)
    assert unbounded.answered(_request(7), 100) == 0 and unbounded.answered(None, None) == 0


def test_a_request_with_no_answer_gives_back_its_charge() -> None:
    held = HeldBytes(1000)
    request = _request(30)
    held.read(request)
    assert held.held == 60
    assert held.answered(request, None) == 0 and held.held == 0


def test_a_frame_weighs_its_tensors_parameters_and_typed_contents() -> None:
    # 8 MiB in a request's or a requested output's parameter had weighed nothing on a stream.
    request = pb.ModelInferRequest(model_name="m", id="r", raw_input_contents=[b"\0" * 100])
    request.parameters["pad"].string_param = "p" * 1000
    tensor = request.inputs.add(name="x", datatype="INT32", shape=[50])
    tensor.parameters["k"].string_param = "v" * 200
    tensor.contents.int_contents.extend([1] * 50)  # 50 one-byte varints, packed: 52 bytes
    request.outputs.add(name="y").parameters["q"].string_param = "w" * 300
    assert frame_bytes(request) == 100 + 1 + 1 + (3 + 1000) + (1 + 200) + 52 + (1 + 300)
