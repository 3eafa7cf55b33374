"""A running server's /metrics page, read as text lines, and the figures tests take from it."""

from __future__ import annotations

import urllib.request

from tests.support.server_process import ServerProcess


def metrics_lines(server: ServerProcess) -> list[str]:
    """The lines of `server`'s /metrics page now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as answer:
        return list(answer.read().decode().splitlines())


def summed(server: ServerProcess, prefix: str) -> float:
    """The sum of the samples whose line starts with `prefix` (a name and the start of its labels)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_lines(server) if line.startswith(prefix))


def deadline_outcomes(server: ServerProcess, model: str) -> dict[str, float]:
    """`model`'s sluiceway_deadline_outcome_total by outcome."""
    prefix = f'sluiceway_deadline_outcome_total{{model="{model}",outcome="'
    return {
        line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics_lines(server)
        if line.startswith(prefix)
    }
