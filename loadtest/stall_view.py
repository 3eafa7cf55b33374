"""What a load tool that ran past its time was waiting on, read from /proc before it is stopped.

perf_analyzer sends without a client deadline, so one answer it never gets holds its point for
good: a stall seen on the H200 (BENCHMARKS.md section 16b) and on 2 cores under load (section 39),
its cause then unknown. From outside, an answer the server never sent and one the tool never read look
alike; the bytes queued on each of the tool's TCP connections to the server tell them apart
(unread by the tool, unread by the server, or none anywhere: the server holds a call it has not
answered), its threads' states say whether it is waiting at all, and its main thread's CPU and
its memory over a second whether it has fallen behind copying its own records (section 39: the
stall caught so). Nothing here needs a tool the machine may lack (ss, gdb: the wheel's binary has
no symbols for gdb to name anyway).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

from loadtest.proc import cpu_s, stat_fields

TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
ESTABLISHED = "01"


@dataclasses.dataclass(frozen=True)
class Socket:
    """One row of /proc/net/tcp: ports, the state (hex), bytes queued to send and unread, inode."""

    local_port: int
    remote_port: int
    state: str
    unsent: int  # tx_queue: written and not yet acknowledged by the peer
    unread: int  # rx_queue: received and not yet read by the owner
    inode: int


def tcp_sockets(tables: tuple[Path, ...] = TCP_TABLES) -> list[Socket]:
    """Every TCP socket of this network namespace, IPv4 and IPv6."""
    found: list[Socket] = []
    for table in tables:
        with contextlib.suppress(OSError):
            for line in table.read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) < 10:
                    continue
                unsent, unread = (int(part, 16) for part in fields[4].split(":"))
                found.append(
                    Socket(
                        int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16),
                        fields[3], unsent, unread, int(fields[9]),
                    )
                )  # fmt: skip
    return found


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` holds open."""
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def group_members(pgid: int) -> list[int]:
    """The processes of process group `pgid` (a wrapper script's binary among them)."""
    members: list[int] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(stat_fields(int(entry))[2]) == pgid:
                    members.append(int(entry))
    return sorted(members)


def connections_view(pids: list[int], port: int, sockets: list[Socket] | None = None) -> str:
    """The established connections processes `pids` hold to `port`, and their server ends'
    queues: how many, and the bytes each side has not read and not had acknowledged."""
    sockets = tcp_sockets() if sockets is None else sockets
    held = set().union(*(socket_inodes(pid) for pid in pids)) if pids else set()
    clients = [s for s in sockets if s.inode in held and s.remote_port == port and s.state == ESTABLISHED]
    ends = {s.remote_port: s for s in sockets if s.local_port == port and s.state == ESTABLISHED}
    servers = [ends[c.local_port] for c in clients if c.local_port in ends]
    if not clients:
        return f"no established connection to port {port}"
    return (
        f"{len(clients)} connections to port {port}: bytes unread by the tool "
        f"{sum(c.unread for c in clients)}, by the server {sum(s.unread for s in servers)}; "
        f"unacknowledged from the tool {sum(c.unsent for c in clients)}, from the server "
        f"{sum(s.unsent for s in servers)} ({len(servers)} server ends found)"
    )


def threads_view(pids: list[int]) -> str:
    """The threads of processes `pids` by state and the kernel function each waits in (wchan)."""
    counts: collections.Counter[str] = collections.Counter()
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    state = stat_fields(pid, int(tid))[0]
                    wchan = Path(f"/proc/{pid}/task/{tid}/wchan").read_text().strip() or "-"
                    counts[f"{state} {wchan}"] += 1
    if not counts:
        return "its threads could not be read"
    return f"{sum(counts.values())} threads: " + ", ".join(f"{n} {what}" for what, n in counts.most_common())


def rss_bytes(pid: int) -> int:
    """Process `pid`'s resident memory (0 once it is gone)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def busy_view(pids: list[int], interval_s: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> str:
    """The largest process's memory and what its main thread did over `interval_s`: perf_analyzer
    keeps every request's inputs over the wire (602 KB each) and its main thread copies them all
    at each window's end, so a starved main thread falls behind, running, its memory growing
    (a reviewer's: ~0.5 GB/s, the last line still "Request concurrency: N"), where a tool waiting
    on an answer sleeps with its memory flat."""
    if not pids:
        return "no process left"
    pid = max(pids, key=rss_bytes)
    try:
        rss, cpu = rss_bytes(pid), cpu_s(pid, pid)
        sleep(interval_s)
        grown, cpu_after, state = rss_bytes(pid) - rss, cpu_s(pid, pid), stat_fields(pid, pid)[0]
    except (OSError, IndexError, ValueError):
        return "its main thread could not be read"
    return (
        f"main thread {state}, {cpu_after - cpu:.2f} s of CPU in {interval_s:g} s; memory "
        f"{rss / 2**30:.2f} GiB, {grown / 2**20:+.0f} MiB meanwhile"
    )


def stall_view(pgid: int, port: int) -> str:
    """The views of process group `pgid` on one line, for the error that reports the stop; never
    raises (its caller stops the tool after it: an odd /proc line must not leave it running)."""
    try:
        pids = group_members(pgid)
        return f"{connections_view(pids, port)}; {threads_view(pids)}; {busy_view(pids)}"
    except Exception as err:
        return f"no view ({type(err).__name__}: {err})"
