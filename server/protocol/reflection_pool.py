"""The one descriptor pool server reflection answers from.

grpcio-reflection looks every symbol up in a single pool (protobuf's default unless given one).
Our generated classes live in a private pool (protos/pool.py, so tritonclient can share a
process with them) while grpc's health and reflection services live in the default pool: the
pool built here holds copies of the files of each service it is given, imports first.
"""

from __future__ import annotations

from google.protobuf.descriptor import FileDescriptor
from google.protobuf.descriptor_pool import DescriptorPool


def reflection_pool(*files: FileDescriptor) -> DescriptorPool:
    """A new pool holding each file and, before it, every file it imports (transitively)."""
    pool = DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for imported in file.dependencies:
            add(imported)
        pool.AddSerializedFile(file.serialized_pb)
        added.add(file.name)

    for file in files:
        add(file)
    return pool
