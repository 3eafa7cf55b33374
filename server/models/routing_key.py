"""A request's routing key and the version a traffic split picks for it: the rule Rollout.route
routes by, and the one a lazy model's early judge (lazy_signatures.py) picks by before its load, so
that the version a request was judged by is the version that serves it.

The key is the request's `traffic_sticky_key` parameter (a string or an integer), else its id; a
request with neither is routed by a random point. Slices (server/models/traffic.py) map either to a
version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from server.errors import InvalidRequest
from server.models.traffic import Slices


class RoutedRequest(Protocol):
    """What routing reads of a request (a ModelInferRequest)."""

    @property
    def id(self) -> str: ...

    @property
    def parameters(self) -> Mapping[str, object]: ...


def pick_version(slices: Slices, sticky_key: str, request: RoutedRequest, draw: Callable[[], float]) -> int:
    """The version `slices` route a request naming none to: its routing key's, else the slice of a
    random point (`draw`). InvalidRequest for a sticky key parameter of the wrong type."""
    key = routing_key(request, sticky_key)
    return slices.pick_key(key) if key else slices.pick(draw())


def routing_key(request: RoutedRequest, sticky_key: str) -> str:
    """The request's routing key: its `sticky_key` parameter (a string or an integer), else (absent
    or the empty string) its id; "" when it has neither (routed at random)."""
    if sticky_key:
        param = request.parameters.get(sticky_key)
        if param is not None:
            kind = param.WhichOneof("parameter_choice")  # type: ignore[attr-defined]
            if kind not in ("string_param", "int64_param", "uint64_param"):
                raise InvalidRequest(
                    f"parameter '{sticky_key}' (the model's traffic_sticky_key) must be a string or "
                    f"an integer, got {kind or 'nothing'}"
                )
            key = str(getattr(param, kind))
            if key:  # an empty key is no key: it had routed at random, ignoring the id
                return key
    return request.id
