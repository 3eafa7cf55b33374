"""Whether a request's computed outputs can be its answer: outputs into shared-memory regions too
small for them, and answers over the server's message limit (`max_message_bytes`).

Both can only be known once the outputs exist (an output of variable shape, BYTES). They are
checked before the batcher counts the outputs as the request's answer (`Admission.accept`), so a
request refused here is counted in `fail` only, never also in queue, compute and inference_count;
and once more on the encoded answer (`check_answer`), for what the first check cannot size (BYTES
sent inline, classification). Unary and stream answers follow one rule: an answer whose message is
over the limit is refused RESOURCE_EXHAUSTED naming its size and the limit. A unary one had been
left to gRPC ("Sent message larger than max") and a stream's to the stream, both counted successes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from batcher.types import Array, Tensors
from protos import grpc_service_pb2 as pb
from protos import wire
from server import datatypes
from server.errors import AnswerTooLarge
from server.protocol.classification import Classes
from server.protocol.shm_tensors import ShmTensors

# Answers with more BYTES elements than this are encoded in a thread, classified ones classified
# there too (about 35 ms of the loop's time here, where a whole answer of 1,000,000 strings had held
# it 0.55 s, and 1,000,000 classes 2.5 s: server/protocol/infer_job.py).
ENCODE_OFF_LOOP_STRINGS = 65_536

# Room for what an answer holds besides its raw outputs, id and model name (tensor names, shapes,
# parameters): an answer whose raw bytes leave this much under the limit is surely within it, and
# its exact size (about a serialization: 204 ms for 64 MiB) is not worked out.
SMALL_PARTS_BYTES = 64 * 1024
# What a stream's frame adds to the ModelInferResponse it wraps: the field's tag and length.
_FRAME_TAG_BYTES = 1
FINAL_RESPONSE = "triton_final_response"
# The parameter a stream adds to each answer (Triton's final-response flag).
_FINAL_FLAG_BYTES = pb.ModelInferResponse(
    parameters={FINAL_RESPONSE: pb.InferParameter(bool_param=True)}
).ByteSize()


@dataclass(frozen=True, slots=True)
class AnswerCheck:
    """`check_outputs` for one request: its Admission.accept."""

    names: Sequence[str]
    shm: ShmTensors | None
    limit: int | None
    frame: pb.ModelInferRequest | None
    header: pb.ModelInferResponse
    classify: Classes | None = None  # the classification extension's, if asked

    def __call__(self, outputs: Tensors) -> None:
        packed: Collection[str] = ()
        classes = self.classify
        if classes is not None:
            strings = sum(classes.strings(name, outputs[name]) for name in classes.counts if name in outputs)
            if strings <= ENCODE_OFF_LOOP_STRINGS:  # sized as sent: the classes' strings, packed
                classified = classes(outputs)
                packed = [name for name in classified if classified[name] is not outputs.get(name)]
                outputs = classified
            else:  # made in a thread with the answer: sized by their least here, exactly then
                outputs = classes.shaped(outputs)
        check_outputs(outputs, self.names, self.shm, self.limit, self.frame, self.header, packed)


def check_outputs(
    outputs: Tensors,
    names: Sequence[str],
    shm: ShmTensors | None,
    limit: int | None,
    frame: pb.ModelInferRequest | None,
    header: pb.ModelInferResponse,
    packed: Collection[str] = (),
) -> None:
    """Raise InvalidRequest for an output its region cannot hold, AnswerTooLarge for an answer of
    `names` from `outputs` over `limit` (None: no limit). `frame`: the request, when its answer is a
    stream's frame (None: a unary answer). `header`: the answer's model name, version and id.
    `packed`: BYTES outputs sized exactly (classified ones: a few strings a row), not by their least."""
    raw = 0
    for name in names:
        array = outputs.get(name)
        if array is None:
            continue
        if shm is not None and name in shm.outputs:
            shm.check_room(name, _region_bytes(array))
        elif array.dtype.kind in "OSU":  # its least (a length an element) unless sized packed
            raw += _region_bytes(array) if name in packed else 4 * array.size
        else:
            raw += array.nbytes
    if limit is None or raw + len(header.id) + len(header.model_name) + SMALL_PARTS_BYTES < limit:
        return
    answer = pb.ModelInferResponse()
    answer.CopyFrom(header)
    for name in names:
        array = outputs.get(name)
        if array is not None:
            wire = datatypes.from_numpy(array.dtype).wire
            answer.outputs.add(name=name, datatype=wire, shape=array.shape)
            answer.raw_output_contents.append(b"")
    size = answer.ByteSize() + sum(
        # each empty entry already counts its tag and a 0 length
        _entry_bytes(_raw_size(outputs[n], n in packed)) - 1
        for n in names
        if n in outputs and (shm is None or n not in shm.outputs)
    )
    check_size(size, limit, frame)  # with BYTES inline, `size` is its least: over the limit, surely


def check_answer(
    answer: pb.ModelInferResponse, limit: int | None, frame: pb.ModelInferRequest | None
) -> None:
    """AnswerTooLarge when the encoded `answer` is over `limit`: what `check_outputs` could not size."""
    if limit is None:
        return
    raw = sum(map(len, answer.raw_output_contents)) + len(answer.id) + len(answer.model_name)
    if raw + SMALL_PARTS_BYTES < limit:
        return
    check_size(answer.ByteSize(), limit, frame)


def check_size(size: int, limit: int, frame: pb.ModelInferRequest | None) -> None:
    """AnswerTooLarge when a ModelInferResponse of `size` bytes makes a message over `limit`."""
    if frame is not None:  # a ModelStreamInferResponse around it, with the final-response flag
        inner = size + _FINAL_FLAG_BYTES
        size = _FRAME_TAG_BYTES + _entry_bytes(inner)
    if size > limit:
        raise AnswerTooLarge(
            f"answer message larger than max ({size} vs. {limit} bytes, the server's "
            f"max_message_bytes): ask for fewer rows or outputs, or use shared memory for outputs"
        )


def _entry_bytes(length: int) -> int:
    """A length-delimited field's length prefix and contents (its tag not included)."""
    prefix = 1
    while length >= 1 << (7 * prefix):
        prefix += 1
    return prefix + length


def _raw_size(array: Array, packed: bool) -> int:
    if array.dtype.kind not in "OSU":
        return array.nbytes
    return _region_bytes(array) if packed else 4 * array.size


def _region_bytes(array: Array) -> int:
    """The bytes `array` takes in its region: a BYTES output as packed (its lengths,
    4 bytes an element, and its items), so a region too small hears the size it needs (it had
    heard the lengths' 4 bytes an element alone; Triton names the packed size)."""
    return array.nbytes if array.dtype.kind not in "OSU" else wire.packed_size(array)


CUT_NOTE = " [message cut to fit max_message_bytes]"
# The least of an error message kept before echoed fields are dropped: its status and reason.
MESSAGE_KEPT_BYTES = 160


def fit_error_frame(frame: pb.ModelStreamInferResponse, limit: int | None) -> None:
    """Shorten an error frame's message so the frame fits `limit`: gRPC ends the whole stream for
    a frame over it ("Sent message larger than max"), and every later request went unanswered. The
    start of the message is kept, with a note that it was cut. Where the echoed fields leave less
    than MESSAGE_KEPT_BYTES of it (an oversized frame's head may hold a 16 KiB version or name,
    more than a small limit: the message had gone to the note alone, status and reason lost), the
    model version, then the model name, are dropped first; then the message is cut further, and
    only then is the request's id (clients match answers by it) dropped."""
    if limit is None or not frame.error_message:
        return
    answer = frame.infer_response
    small = len(frame.error_message.encode()) + len(answer.id) + len(answer.model_name)
    small += len(answer.model_version)
    if small + SMALL_PARTS_BYTES < limit:
        return  # surely within it
    if frame.ByteSize() <= limit:
        return
    message = frame.error_message.encode()
    for field, least in (("", MESSAGE_KEPT_BYTES), ("model_version", MESSAGE_KEPT_BYTES),
                         ("model_name", MESSAGE_KEPT_BYTES), ("", 0), ("id", 0)):  # fmt: skip
        if field:
            answer.ClearField(field)
        if _cut_to_fit(frame, message, limit, min(least, len(message))):
            return
    frame.error_message = CUT_NOTE.strip()


def _cut_to_fit(frame: pb.ModelStreamInferResponse, message: bytes, limit: int, least: int) -> bool:
    """Put `message` in the frame, cut to fit `limit` if it keeps `least` bytes of it at least;
    whether the frame fits."""
    frame.error_message = message.decode(errors="ignore")
    over = frame.ByteSize() - limit
    if over <= 0:
        return True
    keep = len(message) - over - len(CUT_NOTE)
    if keep < least:
        return False
    frame.error_message = message[:keep].decode(errors="ignore") + CUT_NOTE
    return bool(frame.ByteSize() <= limit)
