"""The descriptor pool our generated modules build their message classes in (hand-written).

tritonclient ships generated modules for the same protocol, registering protobuf package
`inference` in protobuf's default pool; ours registered there too, so whichever module a process
imported second failed (duplicate symbol). Built in this pool instead, both live in one process.
The full names (`inference.ModelInferRequest`, ...) and so the wire are unchanged.
"""

from __future__ import annotations

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
