"""Observability: traces, metrics and logs, listening at stage boundaries, never in the path."""
