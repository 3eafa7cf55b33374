"""How many requests of a model have left its queue for a batch, read from the server's /metrics
(the `sluiceway_queue_duration_us` histogram observes each one as its batch forms).

Tests use it to know a request is running without sleeping. ModelStatistics' queue count cannot
say so: as Triton's, it counts a request once it is answered successfully.
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def dispatched(metrics_port: int, model: str) -> int:
    """Requests of `model` (all versions) that left the queue for a batch so far."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as page:
        text = page.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "sluiceway_queue_duration_us":
            continue
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels.get("model") == model:
                total += sample.value
    return int(total)
