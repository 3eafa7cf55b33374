"""HopMargin: the margin for the hop around a run, measured, which a deadline must leave besides the
run itself.

The hop is what a request's answer takes outside its run: from its batch's formation to the run's
start and from the run's end to its caller resuming with the answer. Admission, the queue's
give-up rule, formation's drops and the wait forecast add it to the run's compute. It had been a
fixed 5 ms, which refused every deadline of 5 ms or less, even for a model run inline on the event
loop in 25 us (a hostile client's finding, session 58).

Measured instead, of two parts:
- each batch run through the queue: the seconds from its formation to its answers being set, less
  its run as the estimator saw it (which already holds the executor's thread hop and the loop's
  turns meanwhile), kept as a decayed maximum (`LoopLateness`'s rule: the largest recent one,
  halving with its age);
- `floor_s`, 1 ms, for what the batcher does not see: the request's way in (a gRPC deadline is held
  from the request's arrival, so the wire's time in counts against the client's only) and the
  caller's resumption and the answer's way out. At 0.5 ms, 0-2.7% of the mlp's 1-2 ms requests were
  computed and then late for their client (a tester, session 59).
The whole is capped at `cap_s`, the former fixed figure. While the model's runs go off the event
loop (on an executor thread, or by an async backend) the margin is the cap: the demo resnet's
batches' hops measured 0.14 ms at the median under 2x overload (BENCHMARKS.md section 47), but the
former 5 ms also absorbed such runs' jitter above the fastest recent run, and with the measured
margin a 2 ms model served at 5-6 ms had most of its admitted requests computed and then late. So
the measured margin serves models run inline (a small MLP, 25 us); the others keep 5 ms. An
ensemble's admission keeps `cap_s` a step (server/models/ensemble_admission.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from batcher.lateness import LoopLateness

FLOOR_S = 0.001  # the request's way in and its answer's way out, not seen by the batcher
CAP_S = 0.005  # the former fixed margin: the most this ever asks


@dataclass(slots=True)
class HopMargin:
    """The hop margin of one batcher: `at(now)`; batches' hops told by `observe`."""

    floor_s: float = FLOOR_S
    cap_s: float = CAP_S
    _seen: LoopLateness = field(default_factory=lambda: LoopLateness(half_life_s=10.0, cap_s=CAP_S))
    # Whether the model's runs go off the event loop now (an executor thread's, an async backend's):
    # the margin is then the cap, the former 5 ms, which also absorbed such runs' jitter above the
    # fastest recent one (a 2 ms model with 5-6 ms deadlines had 8 of 13 admitted requests computed
    # and then late with the measured one; a tester, session 59). DynamicBatcher: FastPath.off_loop.
    off_loop: Callable[[], bool] = lambda: False

    def __post_init__(self) -> None:
        if not 0.0 <= self.floor_s <= self.cap_s:
            raise ValueError(f"need 0 <= floor_s <= cap_s, got {self.floor_s} and {self.cap_s}")

    def observe(self, formed_to_answered_s: float, run_s: float, now: float, inline: bool = True) -> None:
        """A batch formed `formed_to_answered_s` seconds before its answers were set at `now`, of
        which its run took `run_s`; `inline`: it ran on the event loop thread (one that did not
        tells nothing here: while such runs are the model's, the margin is the cap, `off_loop`)."""
        if inline:
            self._seen.observe(formed_to_answered_s - run_s, now)

    def at(self, now: float) -> float:
        """The margin to leave for the hop at `now`, in seconds."""
        return self.cap_s if self.off_loop() else min(self.cap_s, self.floor_s + self._seen.current(now))


def hop_at(hop_s: float | Callable[[float], float]) -> Callable[[float], float]:
    """A hop margin as a function of `now`: `hop_s` itself, or a fixed figure's."""
    if callable(hop_s):
        return hop_s
    fixed = float(hop_s)
    return lambda now: fixed
