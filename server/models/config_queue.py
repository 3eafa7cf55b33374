"""Queue policies of dynamic_batching: the default one and each priority level's own.

Triton's ModelQueuePolicy per level (`priority_queue_policy`, keyed by level; levels without one
follow `default_queue_policy`): max_queue_size, default_timeout_microseconds, timeout_action and
allow_timeout_override. The queue is always bounded: max_queue_size 0 takes the server's default.
"""

from __future__ import annotations

from batcher.types import LevelQueuePolicy, TimeoutAction
from protos import model_config_pb2 as mc
from server.models.config_errors import ConfigError


def timeout_action(queue: mc.ModelQueuePolicy) -> TimeoutAction:
    return TimeoutAction.DELAY if queue.timeout_action == mc.ModelQueuePolicy.DELAY else TimeoutAction.REJECT


def allow_override(queue: mc.ModelQueuePolicy) -> bool:
    """Triton: with a default timeout, a request's `timeout` counts only with allow_timeout_override
    (false unless set). Without one there is nothing to override and the request's `timeout`
    counts, as for a model without a queue policy (proto3 cannot tell an unset bool from false)."""
    return queue.allow_timeout_override or queue.default_timeout_microseconds == 0


def level_policies(
    db: mc.ModelDynamicBatching, default_max_queue_size: int
) -> tuple[tuple[int, LevelQueuePolicy], ...]:
    """Each level's own queue policy, by level."""
    return tuple(
        (
            level,
            LevelQueuePolicy(
                max_queue_size=queue.max_queue_size or default_max_queue_size,
                default_timeout_s=(queue.default_timeout_microseconds / 1e6) or None,
                timeout_action=timeout_action(queue),
                allow_timeout_override=allow_override(queue),
            ),
        )
        for level, queue in sorted(db.priority_queue_policy.items())
    )


def validate_priority_policies(db: mc.ModelDynamicBatching, where: str) -> None:
    """Levels of priority_queue_policy must be levels of the model (1..priority_levels)."""
    for level in sorted(db.priority_queue_policy):
        if not 1 <= level <= db.priority_levels:
            raise ConfigError(
                f"{where}.priority_queue_policy level {level} is not between 1 and "
                f"priority_levels ({db.priority_levels})"
            )
