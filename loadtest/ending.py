"""How a load-test run ended: its last lines on stderr and its exit status.

0: every step ran and its requests reached the target (errors the target answered with, overload
refusals and deadlines included, are measurements). 3: some requests could not reach the target
(its connection gone: a server that died), or the target accepted no connection before a step.
1: a load worker exited or failed mid-run. 130: Ctrl-C or SIGTERM. A run stopped part-way keeps
the steps measured before it, marked `"interrupted": true` (and `stopped_by` saying why).
"""

from __future__ import annotations

from typing import Any

PROG = "sluiceway-loadtest"
EXIT_OK = 0
EXIT_WORKER_FAILED = 1
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130
LOAD_WORKER = "load_worker"
TARGET_UNREACHABLE = "target_unreachable"


def stopped_by(kind: str, message: str) -> dict[str, str]:
    """What results["stopped_by"] holds for a run a worker or the target ended."""
    return {"kind": kind, "message": message}


def exit_status(results: dict[str, Any]) -> int:
    stopped = results.get("stopped_by")
    if stopped:
        return EXIT_UNREACHABLE if stopped["kind"] == TARGET_UNREACHABLE else EXIT_WORKER_FAILED
    if results.get("interrupted"):
        return EXIT_INTERRUPTED
    if any(entry.get("unreachable") for entry in results["results"]):
        return EXIT_UNREACHABLE
    return EXIT_OK


def lines(results: dict[str, Any]) -> list[str]:
    """The lines after the table that say why the exit status is not 0."""
    out = []
    for entry in results["results"]:
        lost = entry.get("unreachable")
        if lost:
            example = entry.get("error_messages", {}).get("UNAVAILABLE", "")
            out.append(
                f"{PROG}: {entry['target']} {entry['step']['label']}: the target stopped answering: "
                f"{lost} of {entry['requests']} requests could not reach it (UNAVAILABLE"
                + (f", e.g. {example})" if example else ")")
            )
    stopped = results.get("stopped_by")
    if stopped:
        out.append(f"{PROG}: {stopped['message']}; the steps measured before it are above")
    elif results.get("interrupted"):
        out.append(f"{PROG}: interrupted; the steps measured before it are above")
    return out
