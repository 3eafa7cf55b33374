"""server/protocol/loop_pace.py: a survivor of the 2026-12-05 mutation run. Before the pace has looked
at `waiting()` it must not take calls as waiting: a sample then holds nothing. The loop's clock is
only a difference of readings (time.monotonic's reference point is undefined), so a sample may come
at a negative time, before the first look is due."""

from __future__ import annotations

from server.protocol.loop_pace import LoopPace
from tests.unit.test_loop_pace import HOUR, LAG_S, Waiting


def test_a_lag_before_any_look_at_waiting_holds_no_reads_when_no_call_waits() -> None:
    # A late timer at clock -1.0: no look is due yet (looks start at -WAITING_LOOK_S), and no
    # call waits. `_calls_wait = True` as the starting answer held reads for streams alone.
    waiting = Waiting(False)
    pace = LoopPace(LAG_S, HOUR, waiting)
    pace.lag_sample(0.010, -1.0)
    assert pace.holding_ticks == 0 and not pace._holding
