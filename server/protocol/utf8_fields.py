"""Which string field of a request that did not parse holds bytes that are not UTF-8.

proto3 `string` fields must be UTF-8, and protobuf refuses a message with one that is not
("Error parsing message", naming nothing), so a client of another toolkit that sends a Latin-1
model or input name was told only that its message was invalid, and a stream's error frame for it
carried no id to match it by. Here such a message is parsed again as its *bytes twin* (the same
message with every `string` field declared `bytes` and maps as plain repeated entries, which
parses whatever the first parse refused for UTF-8 alone), and the first field whose bytes are not
UTF-8 is named, e.g. `inputs[0].name`. For ModelInferRequest the twin also gives the request's
model name, version and id when those are valid, so the stream's error frame carries them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf import message as protobuf_message
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message_factory import GetMessageClass

from protos import grpc_service_pb2 as pb

# The walk for the faulty field is Python, on the event loop (~1.6 us a field here: 4,096 fields
# took 6.5 ms beside the 13 ms parse of the 1 MB request they were in): a message of many small
# strings is looked through only this far, the fault past it reported without its place. A real
# request's strings come well within it; frame_size.py bounds its head walk the same way.
MAX_FIELDS_WALKED = 256
_HEAD_FIELDS = ("model_name", "model_version", "id")


class Utf8Fault(NamedTuple):
    """The first string field not UTF-8 (None: past MAX_FIELDS_WALKED), and for a
    ModelInferRequest its model name, version and id as far as they are valid."""

    field: str | None
    head: pb.ModelInferRequest | None

    @property
    def reason(self) -> str:
        where = f"field '{self.field}'" if self.field else "a string field"
        return f"{where} is not valid UTF-8 (protobuf string fields must be UTF-8)"


class BytesTwins:
    """The bytes twins of message types, built once per type (held by the deserializers)."""

    def __init__(self) -> None:
        self._pool = descriptor_pool.DescriptorPool()
        self._added: set[str] = set()
        self._strings: set[str] = set()  # full names of the original string fields
        self._classes: dict[str, type[protobuf_message.Message]] = {}

    def fault(self, data: bytes, message_type: type[protobuf_message.Message]) -> Utf8Fault | None:
        """The UTF-8 fault that made `data` not parse as `message_type`; None when it was another."""
        twin = self._twin(message_type.DESCRIPTOR)()
        try:
            twin.ParseFromString(data)
        except protobuf_message.DecodeError:
            return None  # not (only) UTF-8: the parser's own words stand
        field, _ = self._first_fault(twin, "", MAX_FIELDS_WALKED)
        head = _head(twin) if message_type is pb.ModelInferRequest else None
        return Utf8Fault(field, head)

    def _twin(self, descriptor: Descriptor) -> type[protobuf_message.Message]:
        if descriptor.full_name not in self._classes:
            self._add_file(descriptor.file)
            twin = self._pool.FindMessageTypeByName(descriptor.full_name)
            self._classes[descriptor.full_name] = GetMessageClass(twin)
        return self._classes[descriptor.full_name]

    def _add_file(self, file: FileDescriptor) -> None:
        if file.name in self._added:
            return
        for dependency in file.dependencies:
            self._add_file(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        for message in proto.message_type:
            self._as_bytes(message, proto.package)
        self._pool.Add(proto)
        self._added.add(file.name)

    def _as_bytes(self, message: descriptor_pb2.DescriptorProto, scope: str) -> None:
        name = f"{scope}.{message.name}" if scope else message.name
        message.options.ClearField("map_entry")  # a map's key may then be bytes
        for field in message.field:
            if field.type == FieldDescriptor.TYPE_STRING:
                field.type = FieldDescriptor.TYPE_BYTES
                self._strings.add(f"{name}.{field.name}")
        for nested in message.nested_type:
            self._as_bytes(nested, name)

    def _first_fault(
        self, message: protobuf_message.Message, path: str, budget: int
    ) -> tuple[str | None, int]:
        """The path of the first string field in `message` that is not UTF-8, and what is left of
        the walk's budget; (None, 0) once the budget is spent."""
        for field, value in message.ListFields():
            here = f"{path}{field.name}"
            single = isinstance(value, (protobuf_message.Message, bytes, str, int, float))
            values = [value] if single else value
            for index, item in enumerate(values):
                budget -= 1
                if budget <= 0:
                    return None, 0
                at = here if single else f"{here}[{_entry_name(item, index)}]"
                if field.full_name in self._strings and not _is_utf8(item):
                    return at, budget
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    found, budget = self._first_fault(item, at + ".", budget)
                    if found is not None or budget <= 0:
                        return found, budget
        return None, budget


def _entry_name(item: Any, index: int) -> str:
    """A map entry by its key when that is text (`parameters['timeout']`), else by its index."""
    if isinstance(item, protobuf_message.Message) and item.DESCRIPTOR.name.endswith("Entry"):
        key = getattr(item, "key", None)
        if isinstance(key, bytes) and _is_utf8(key):
            return repr(key.decode())
    return str(index)


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def _head(twin: Any) -> pb.ModelInferRequest:
    """A request's model name, version and id from its twin, each when it is UTF-8 (its error
    frame names them)."""
    head = pb.ModelInferRequest()
    for name in _HEAD_FIELDS:
        value = getattr(twin, name)
        if _is_utf8(value):
            setattr(head, name, value.decode())
    return head
