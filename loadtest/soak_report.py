"""The soak's books: a tally per traffic class, the rules each class is held to, the
reconciliation that turns them into named checks, and the text table and JSON summary.

Pure functions over small dataclasses: the reconciliation is unit-tested with crafted tallies
(tests/integration/test_soak.py), so a tally with a loss is known to fail it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

NO_ANSWER = "NO_ANSWER"  # the client's own deadline passed (or a stream ended) without an answer
BAD_ANSWER = "BAD_ANSWER"  # answered OK, but not with the outputs the request asked for
WATCHDOG = "UNAVAILABLE (watchdog)"  # UNAVAILABLE naming run_timeout_s: the documented status
QUEUE_FULL = "UNAVAILABLE (queue full)"  # a model's max_queue_size reached: Triton's code and words
# Statuses the server gives a well-formed request under load (overload shedding, deadlines).
LOAD = frozenset({"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", QUEUE_FULL})


@dataclass(slots=True)
class ClassTally:
    """What one traffic class sent and how each request was settled: exactly one of ok, an
    error status, cancelled by this client, or unanswered."""

    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    cancelled: int = 0  # cancelled by the client (a call cancelled, a stream cancelled, a channel closed)
    unanswered: int = 0  # never answered: a loss
    duplicates: int = 0  # stream answers for an id already answered
    unknown_ids: int = 0  # stream answers for an id never sent on that stream
    examples: dict[str, str] = field(default_factory=dict)  # the first message of each error status
    slowest_s: float = 0.0  # the longest a unary call of this class took to be answered

    def settled(self) -> int:
        return self.ok + sum(self.errors.values()) + self.cancelled + self.unanswered

    def add(self, other: ClassTally) -> None:
        self.sent += other.sent
        self.ok += other.ok
        self.errors.update(other.errors)
        self.cancelled += other.cancelled
        self.unanswered += other.unanswered
        self.duplicates += other.duplicates
        self.unknown_ids += other.unknown_ids
        self.examples = {**other.examples, **self.examples}
        self.slowest_s = max(self.slowest_s, other.slowest_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "ok": self.ok,
            "errors": dict(sorted(self.errors.items())),
            "cancelled_by_client": self.cancelled,
            "unanswered": self.unanswered,
            "duplicates": self.duplicates,
            "unknown_ids": self.unknown_ids,
            "examples": dict(sorted(self.examples.items())),
            "slowest_s": round(self.slowest_s, 3),
        }


@dataclass(frozen=True, slots=True)
class Rule:
    """What a class may be answered. `allowed`: error statuses that are fine; `expect`: a hostile
    class whose every request must be refused with exactly this status (then `ok` is a failure)."""

    allowed: frozenset[str] = LOAD
    expect: str | None = None
    fault: bool = False  # injected faults: INTERNAL is allowed only in these classes


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    detail: str = ""


def class_checks(name: str, tally: ClassTally, rule: Rule) -> list[Check]:
    """Every request accounted for, none unanswered or answered twice, only allowed statuses."""
    checks = [
        Check(
            f"{name}: sent == ok + errors + cancelled + unanswered",
            tally.sent == tally.settled(),
            f"sent {tally.sent}, settled {tally.settled()}",
        ),
        Check(f"{name}: nothing unanswered", tally.unanswered == 0, f"{tally.unanswered} unanswered"),
        Check(
            f"{name}: every stream id answered exactly once",
            tally.duplicates == 0 and tally.unknown_ids == 0,
            f"{tally.duplicates} duplicate, {tally.unknown_ids} unknown ids",
        ),
    ]
    if rule.expect is not None:
        wrong = {status: n for status, n in tally.errors.items() if status != rule.expect}
        if tally.ok:
            wrong["OK"] = tally.ok
        checks.append(
            Check(
                f"{name}: every request refused with {rule.expect}",
                not wrong and tally.sent > 0,
                _text(wrong),
            )
        )
    else:
        wrong = {status: n for status, n in tally.errors.items() if status not in rule.allowed}
        checks.append(Check(f"{name}: only expected statuses", not wrong, _text(wrong)))
    return checks


def reconcile(tallies: Mapping[str, ClassTally], rules: Mapping[str, Rule]) -> list[Check]:
    """Checks for every class (a class without a rule is a failure), then the global ones: INTERNAL
    only from injected faults, UNKNOWN never."""
    checks: list[Check] = []
    for name, tally in tallies.items():
        rule = rules.get(name)
        if rule is None:
            checks.append(Check(f"{name}: has a rule", False, "no rule for this traffic class"))
            continue
        checks.extend(class_checks(name, tally, rule))
    internal = {n: t.errors["INTERNAL"] for n, t in tallies.items() if t.errors["INTERNAL"]}
    stray = {n: c for n, c in internal.items() if not rules.get(n, Rule()).fault}
    checks.append(Check("INTERNAL only from injected faults", not stray, _text(stray)))
    unknown = {n: t.errors["UNKNOWN"] for n, t in tallies.items() if t.errors["UNKNOWN"]}
    checks.append(Check("no UNKNOWN status", not unknown, _text(unknown)))
    return checks


def _text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def failed(checks: Iterable[Check]) -> list[Check]:
    return [check for check in checks if not check.passed]


def table(tallies: Mapping[str, ClassTally], seconds: float) -> str:
    """One line a class: sent, rate, ok, cancelled, unanswered and errors by status."""
    lines = [
        f"{'class':<24}{'sent':>9}{'per s':>9}{'ok':>9}{'cancel':>8}{'lost':>6}{'max s':>7}  errors by status"
    ]
    for name, t in tallies.items():
        rate = t.sent / seconds if seconds > 0 else 0.0
        lines.append(
            f"{name:<24}{t.sent:>9}{rate:>9.1f}{t.ok:>9}{t.cancelled:>8}"
            f"{t.unanswered + t.duplicates + t.unknown_ids:>6}{t.slowest_s:>7.2f}  {_text(t.errors) or '-'}"
        )
    return "\n".join(lines)


def checks_text(checks: Iterable[Check]) -> str:
    """Every check, except that the passed per-class ones ("class: what") share one line."""
    checks = list(checks)
    per_class = [c for c in checks if c.passed and ": " in c.name]
    classes = {c.name.split(": ")[0] for c in per_class}
    lines = [f"PASS  {len(per_class)} per-class checks of {len(classes)} classes (see summary.json)"]
    lines += [
        f"{'PASS' if c.passed else 'FAIL'}  {c.name}" + (f"  ({c.detail})" if c.detail else "")
        for c in checks
        if c not in per_class
    ]
    return "\n".join(lines)


def summary(
    tallies: Mapping[str, ClassTally],
    hostile: Mapping[str, ClassTally],
    checks: Iterable[Check],
    extra: Mapping[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """The JSON summary: per class (with its request rate), per hostile kind, every check."""
    checks = list(checks)

    def entry(t: ClassTally) -> dict[str, Any]:
        return {**t.as_dict(), "per_s": round(t.sent / seconds, 1) if seconds > 0 else 0.0}

    return {
        **extra,
        "classes": {name: entry(t) for name, t in tallies.items()},
        "hostile": {name: t.as_dict() for name, t in hostile.items()},
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in checks],
        "passed": not failed(checks),
    }
