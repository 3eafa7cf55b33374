"""The zygote: a process that has imported the server once and forks a test's server from there.

    python -m tests.support.zygote_main FD     (FD: its end of a socketpair; server_zygote.py)

A server start in the tests was ~1.4 s of CPU, most of it imports (onnxruntime, numpy, grpc,
pydantic); the test command starts some hundreds. A forked child has them already. It runs what
`python -m server` runs (server/__main__.py), with the request's argv and environment and its
stdout and stderr on the pipe sent with the request.

Each request is one message, JSON {"argv": [...], "env": {...}, "ignored_signals": [...]}, with two
file descriptors: the child's output pipe and a status pipe. The reply is {"pid": N}. When the
child ends, its exit code (negative: the signal that ended it, as subprocess reports it) is written
to the status pipe, which is then closed. The zygote ends when its socket's other end closes.

Forking is safe here because nothing has started: onnxruntime's telemetry thread is off
(quiet_telemetry, as the CLI does), no grpc channel or server exists, no event loop; the one other
thread is OpenBLAS's pool, which handles fork itself (pthread_atfork).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import sys

MAX_REQUEST_BYTES = 1 << 20
# The signals whose disposition a child gets from its starter (ignored or not).
PASSED_SIGNALS = (
    signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
)  # fmt: skip


def _import_the_server() -> None:
    from server.runtime_check import quiet_telemetry

    if os.environ.get("ORT_DISABLE_TELEMETRY", "1") != "1":  # its thread would start: no fork
        raise SystemExit("the zygote forks only with onnxruntime's telemetry off")
    quiet_telemetry(os.environ)  # before onnxruntime's import, or its telemetry thread starts
    import server.__main__
    import server.app
    import server.cli  # noqa: F401


def _child(request: dict[str, object], output: int) -> list[str]:
    """In the forked child: its environment, its stdout and stderr; the argv to run."""
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.close(output)
    # As a command gets them: what its starter ignores stays ignored (nohup's SIGHUP), the rest
    # default, and SIGINT Python's KeyboardInterrupt unless ignored.
    ignored = request["ignored_signals"]
    assert isinstance(ignored, list)
    for number in (signal.SIGCHLD, *PASSED_SIGNALS):
        signal.signal(number, signal.SIG_IGN if number in ignored else signal.SIG_DFL)
    if signal.SIGINT not in ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    env = request["env"]
    assert isinstance(env, dict)
    os.environ.clear()
    os.environ.update(env)
    argv = request["argv"]
    assert isinstance(argv, list)
    return [str(word) for word in argv]


def _report_exit(pidfd: int, pid: int, status_pipe: int) -> None:
    """Reap the child that ended and write its exit code (as subprocess says it) to its status pipe."""
    os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    with contextlib.suppress(BrokenPipeError):  # its handle is gone: nobody waits
        os.write(status_pipe, str(os.waitstatus_to_exitcode(status)).encode())
    os.close(status_pipe)


def serve_forks(control: socket.socket) -> list[str] | None:
    """Fork a child for each request until the control socket closes: None in the zygote, the
    child's argv in each child (which returns from here to run it)."""
    statuses: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, status pipe)
    with selectors.DefaultSelector() as selector:
        selector.register(control, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj is not control:  # a child ended
                    selector.unregister(key.fd)
                    _report_exit(key.fd, *statuses.pop(key.fd))
                    continue
                message, fds, _, _ = socket.recv_fds(control, MAX_REQUEST_BYTES, 2)
                if not message or len(fds) != 2:  # the test process is gone
                    return None
                output, status_pipe = fds
                request = json.loads(message)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    for pidfd, (_, other_status) in statuses.items():
                        os.close(pidfd)
                        os.close(other_status)
                    os.close(status_pipe)
                    control.close()
                    return _child(request, output)
                os.close(output)
                pidfd = os.pidfd_open(pid)
                statuses[pidfd] = (pid, status_pipe)
                selector.register(pidfd, selectors.EVENT_READ)
                control.sendall(json.dumps({"pid": pid}).encode())


if __name__ == "__main__":
    control = socket.socket(fileno=int(sys.argv[1]))
    _import_the_server()
    control.sendall(b'{"ready": true}')
    argv = serve_forks(control)
    if argv is not None:
        sys.argv = argv
        from server.__main__ import main

        sys.exit(main())
