"""The soak (loadtest/soak.py): its reconciliation catches losses, and its short mode passes
against a real server (10 s of mixed traffic with injected faults, cancellations, reloads and
hostile requests)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from loadtest.soak import RULES
from loadtest.soak import main as soak_main
from loadtest.soak_report import LOAD, WATCHDOG, ClassTally, Rule, failed, reconcile


def tally(sent: int, ok: int, **errors: int) -> ClassTally:
    return ClassTally(sent=sent, ok=ok, errors=Counter(errors))


def failures(tallies: dict[str, ClassTally], rules: dict[str, Rule]) -> list[str]:
    return [check.name for check in failed(reconcile(tallies, rules))]


NORMAL = {"unary": Rule(), "faults": Rule(allowed=LOAD | {"INTERNAL"}, fault=True)}


def test_balanced_books_pass() -> None:
    books = {"unary": tally(10, 8, RESOURCE_EXHAUSTED=2), "faults": tally(5, 4, INTERNAL=1)}
    assert failures(books, NORMAL) == []


def test_an_unanswered_request_is_a_loss() -> None:
    lost = tally(10, 9)
    lost.unanswered = 1
    assert failures({"unary": lost}, NORMAL) == ["unary: nothing unanswered"]


def test_a_request_the_books_lost_track_of_fails_the_balance() -> None:
    assert failures({"unary": tally(10, 9)}, NORMAL) == [
        "unary: sent == ok + errors + cancelled + unanswered"
    ]


def test_cancelled_by_the_client_balances_but_answered_twice_does_not() -> None:
    cancelled = tally(10, 7)
    cancelled.cancelled = 3
    assert failures({"unary": cancelled}, NORMAL) == []
    twice = tally(10, 10)
    twice.duplicates = 1
    assert failures({"unary": twice}, NORMAL) == ["unary: every stream id answered exactly once"]


def test_internal_outside_the_fault_classes_and_unknown_fail() -> None:
    books = {"unary": tally(3, 1, INTERNAL=1, UNKNOWN=1)}
    assert failures(books, NORMAL) == [
        "unary: only expected statuses",
        "INTERNAL only from injected faults",
        "no UNKNOWN status",
    ]


def test_hostile_requests_must_all_get_their_status() -> None:
    rules = {"bad": Rule(expect="INVALID_ARGUMENT")}
    assert failures({"bad": tally(3, 0, INVALID_ARGUMENT=3)}, rules) == []
    assert failures({"bad": tally(3, 1, INVALID_ARGUMENT=2)}, rules) == [
        "bad: every request refused with INVALID_ARGUMENT"
    ]
    assert failures({"bad": tally(3, 0, INVALID_ARGUMENT=2, INTERNAL=1)}, rules)
    assert failures({"other": tally(1, 1)}, rules) == ["other: has a rule"]


def test_the_watchdog_status_is_allowed_only_where_runs_hang() -> None:
    assert WATCHDOG in RULES["fault_hang"].allowed
    assert all(WATCHDOG not in rule.allowed for name, rule in RULES.items() if name != "fault_hang")
    assert {name for name, rule in RULES.items() if rule.fault} == {"fault_raise", "stream_fault_raise"}


def test_the_short_soak_balances_against_a_real_server(tmp_path: Path) -> None:
    code = soak_main(["--short", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    bad = [check for check in summary["checks"] if not check["passed"]]
    assert code == 0 and summary["passed"], bad
    classes = summary["classes"]
    for name, entry in classes.items():
        assert entry["unanswered"] == 0 and entry["duplicates"] == 0, (name, entry)
    assert classes["unary_mlp"]["ok"] > 0 and classes["stream_mlp"]["ok"] > 0
    assert classes["fault_hang"]["errors"].get(WATCHDOG, 0) > 0
    assert classes["reload"]["ok"] > 0
    assert all(entry["sent"] > 0 for entry in summary["hostile"].values())
    assert summary["server_exit_code"] == 0
