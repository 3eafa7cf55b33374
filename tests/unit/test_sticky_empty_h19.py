"""An empty `traffic_sticky_key` parameter is no key: the request's id routes it, as when the
parameter is absent (it had routed at random, 4-6 of 10 ids away from their version), in the loaded
routing and in the lazy model's early judge alike."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from protos import grpc_service_pb2 as pb
from server.models.lazy_signatures import UnnamedRouting
from server.models.routing_key import pick_version, routing_key
from server.models.traffic import Slices

SLICES = Slices.of({1: 50, 2: 50})
IDS = [f"id{i}" for i in range(20)]


@dataclass
class Request:
    id: str
    parameters: Mapping[str, object] = field(default_factory=dict)


def away_from(version: int) -> float:
    """A random point whose slice is the other version: a random route would miss `version`."""
    return 0.75 if SLICES.pick(0.25) == version else 0.25


@pytest.mark.parametrize("rid", IDS)
def test_an_empty_sticky_key_routes_by_the_request_id(rid: str) -> None:
    empty = Request(rid, {"user": pb.InferParameter(string_param="")})
    by_id = SLICES.pick_key(rid)
    point = away_from(by_id)
    assert routing_key(empty, "user") == rid
    assert pick_version(SLICES, "user", empty, lambda: point) == by_id
    assert pick_version(SLICES, "user", Request(rid), lambda: point) == by_id  # as when absent
    lazy = UnnamedRouting(newest=2, slices=SLICES, sticky_key="user")
    assert lazy.pick(empty, lambda: point)[0] == by_id


def test_an_empty_key_and_no_id_is_routed_at_random() -> None:
    empty = Request("", {"user": pb.InferParameter(string_param="")})
    assert routing_key(empty, "user") == ""
    for point in (0.25, 0.75):
        assert pick_version(SLICES, "user", empty, lambda p=point: p) == SLICES.pick(point)
    # Keys that are not empty still win over the id, integer 0 included.
    zero = Request("id0", {"user": pb.InferParameter(int64_param=0)})
    assert routing_key(zero, "user") == "0"
    assert routing_key(Request("id0", {"user": pb.InferParameter(string_param=" ")}), "user") == " "
