"""Rollout changes during a drain are refused UNAVAILABLE "server is shutting down", as repository
changes are: SetWeights and Promote had been answered OK by a process about to exit, where the
change was then lost (a tester, drain_admin.py: `Promote 2 -> OK` 0.5 s after SIGTERM)."""

from __future__ import annotations

from typing import cast

import grpc
import pytest

from server.admin.service import AdminServicer
from server.errors import ShuttingDown, status_for
from server.models.manager import ModelManager
from server.models.versions import ModelEntry


def test_a_rollout_change_while_the_server_stops_is_refused_unavailable() -> None:
    stopping = False
    admin = AdminServicer(cast(ModelManager, object()), is_stopping=lambda: stopping)
    entry = cast(ModelEntry, object())
    stopping = True
    changes: tuple[tuple[str, int | None, dict[int, int]], ...] = (
        ("weights", None, {1: 10, 2: 90}),
        ("promote", 2, {}),
        ("rollback", 2, {}),
    )
    for kind, version, weights in changes:
        with pytest.raises(ShuttingDown, match="shutting down: rollout changes are not taken") as err:
            admin._change(entry, kind, version, weights, "")
        assert status_for(err.value)[0] == grpc.StatusCode.UNAVAILABLE
