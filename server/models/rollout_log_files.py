"""Under `--workers N`: reading a worker's view of the share directory's log files (rollout_ops.py's
changes, rollout_snapshot.py's snapshots), each unreadable file said once, and the directory's
modification time (the check's one stat). RolloutShare (rollout_share.py) applies what these read.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from server.models.rollout_ops import OperatorChange, change_file_name, log_key, read_change
from server.models.rollout_snapshot import Snapshot, read_snapshot, snapshot_file_name

log = logging.getLogger(__name__)


class LogFiles:
    """The files of the share directory as one worker reads them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.opened = 0  # change and snapshot files looked for (found or not): a check's cost
        self._passed: set[str] = set()  # unreadable files, said once
        self._missing_said = False

    def change(self, model: str, gen: str, seq: int) -> OperatorChange | bool | None:
        """Change `seq` of the log; None when not logged (yet); False when unreadable (passed over)."""
        name = change_file_name(model, gen, seq)
        self.opened += 1
        try:
            change = read_change(self.directory / name)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as err:  # RecursionError: nested JSON
            if name not in self._passed:
                self._passed.add(name)
                log.error("rollout: %s in %s is no rollout change (%s): passed over",
                          name, self.directory, err)  # fmt: skip
            return False
        if change.model != model or change.generation != gen or change.seq != seq:
            log.error("rollout: %s in %s names another change: passed over", name, self.directory)
            return False
        return change

    def snapshot(self, model: str, gen: str) -> Snapshot | None:
        """The log's snapshot; None when there is none or it is unreadable (said once)."""
        name = snapshot_file_name(log_key(model, gen))
        self.opened += 1
        try:
            snapshot = read_snapshot(self.directory / name)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as err:
            if name not in self._passed:
                self._passed.add(name)
                log.error("rollout: %s in %s is no rollout snapshot (%s): not used",
                          name, self.directory, err)  # fmt: skip
            return None
        if snapshot.model != model or snapshot.generation != gen:
            log.error("rollout: %s in %s names another model's state: not used", name, self.directory)
            return None
        return snapshot

    def stamp(self) -> int | None:
        """The directory's modification time (one stat); None, said once, when it is gone."""
        try:
            info = os.stat(self.directory)
            stamp: int | None = info.st_mtime_ns if stat.S_ISDIR(info.st_mode) else None
        except OSError:
            stamp = None
        if stamp is None and not self._missing_said:
            log.error("rollout: cannot read the workers' shared changes: %s is gone", self.directory)
        self._missing_said = stamp is None
        return stamp
