"""What Rollout (rollout.py) asks of the workers' change log under `--workers N`
(server/models/rollout_share.py's RolloutShare): a Protocol, so rollout.py needs no import of it."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from server.models.rollout_snapshot import Snapshot
    from server.models.rollout_state import ModelRollout
    from server.models.versions import ModelEntry


class SharedLog(Protocol):
    """Under --workers: the workers' change log (server/models/rollout_share.py's RolloutShare)."""

    def carry_proposal(self, old: ModelRollout, new: ModelRollout) -> Snapshot | None:
        """What `old` (its log applied to the end) would carry onto `new`, a state of other files."""

    def log_generation(self, model: str, files: str, switching: bool) -> str:
        """The change log a state built now for `model`'s files `files` follows; `switching` from
        this worker's state of other files."""

    def unloaded(self, model: str) -> None:
        """The model was unloaded here: its next load starts a new period."""

    def built(self, entry: ModelEntry, carried: Snapshot | None = None) -> None:
        """A state was built for `entry`: apply the changes its generation's log holds already
        (`carried`, what the files before carry, logged first when the log holds none)."""

    def auto_rollback(self, entry: ModelEntry, version: int, reason: str) -> None:
        """This worker's window says roll `version` back: log it in order, then apply it."""

    def logged_weights(
        self, model: str, files: str, weights: Mapping[int, int] | None, served: Collection[int]
    ) -> dict[int, int] | None:
        """`weights` after the log a load of `model`'s files `files` (their digest) would follow,
        read from the share directory (a lazy model not loaded here)."""
