"""batcher/log_ration.py: one line a period, the lines held back counted into the next."""

from __future__ import annotations

import threading

from batcher.log_ration import Ration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_a_period_and_the_held_back_counted_into_the_next() -> None:
    clock = Clock()
    ration = Ration(10.0, clock)
    assert ration.take() == 0  # the first at once
    assert [ration.take() for _ in range(5)] == [None] * 5
    clock.now += 9.999
    assert ration.take() is None
    clock.now += 0.001
    assert ration.take() == 6
    assert ration.note(6) == " (6 more like it since the last such line, not logged)"
    assert ration.note(0) == ""
    clock.now += 60.0
    assert ration.take() == 0


def test_threads_taking_at_once_log_one_line() -> None:
    ration = Ration(3600.0)
    got: list[int | None] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(200):
            said = ration.take()
            with lock:
                got.append(said)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got.count(0) == 1 and got.count(None) == 8 * 200 - 1


def test_flush_gives_the_count_held_back_and_starts_again() -> None:
    clock = Clock()
    ration = Ration(10.0, clock)
    assert ration.take() == 0 and ration.take() is None and ration.take() is None
    assert ration.flush() == 2 and ration.flush() == 0
    clock.now += 10.0
    assert ration.take() == 0  # what flush took is not counted again
