"""One gRPC call written frame by frame over HTTP/2 (the h2 library), for what no grpc client
sends: a unary call with no message, a length prefix longer than its data, a call that never
half-closes. Returns what came back: the status line, grpc-status and grpc-message, or why not."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class RawAnswer:
    headers: dict[str, str] = field(default_factory=dict)  # response headers and trailers together
    reset: int | None = None  # RST_STREAM's error code
    timed_out: bool = False

    @property
    def grpc_status(self) -> int | None:
        status = self.headers.get("grpc-status")
        return None if status is None else int(status)

    @property
    def grpc_message(self) -> str:
        return self.headers.get("grpc-message", "")


def grpc_frame(message: bytes, *, declared_length: int | None = None) -> bytes:
    """gRPC's length-prefixed message: flag 0 (not compressed), then its length (or a false one)."""
    length = len(message) if declared_length is None else declared_length
    return b"\x00" + struct.pack(">I", length) + message


def raw_call(
    address: str, path: str, body: bytes, *, end_stream: bool = True, timeout_s: float = 10.0
) -> RawAnswer:
    """POST `body` (already framed) to `path` on a new connection; wait for the call's status, at
    most `timeout_s` (then `timed_out`)."""
    host, port = address.rsplit(":", 1)
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    connection = h2.connection.H2Connection(config)
    answer = RawAnswer()
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        connection.initiate_connection()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", address),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        connection.send_headers(1, headers)
        connection.send_data(1, body, end_stream=end_stream)
        sock.sendall(connection.data_to_send())
        deadline = time.monotonic() + timeout_s
        while "grpc-status" not in answer.headers and answer.reset is None:
            left = deadline - time.monotonic()
            if left <= 0:
                answer.timed_out = True
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                answer.timed_out = True
                break
            if not chunk:
                break
            for event in connection.receive_data(chunk):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    answer.headers.update((str(k), str(v)) for k, v in event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    answer.reset = int(event.error_code)
            sock.sendall(connection.data_to_send())
    return answer
