"""`python -m server` and the `sluiceway` console script (pyproject's [project.scripts], the images'
ENTRYPOINT): both start here, so both have the start-up SIGTERM handler. The script had called
`server.cli:main` directly, whose imports take ~1.5 s with SIGTERM's default action: killed by the
signal (exit -15), and as a container's PID 1 not even that (the kernel drops a signal PID 1 does
not handle), so the pod waited for its SIGKILL."""

import sys

try:
    # Standard library only, a few ms: the handlers are in place before the heavy imports.
    from server.start_signals import (
        Terminated,
        exit_interrupted,
        exit_terminated,
        interrupted,
        raise_on_sigint,
        raise_on_sigterm,
    )
except KeyboardInterrupt:  # Ctrl-C before them (exit -2 and a traceback: it escaped everything)
    print("sluiceway: interrupted", file=sys.stderr)
    sys.exit(130)


def main() -> int:
    """Install the start-up SIGTERM and SIGINT handlers, then run the command line; its exit code."""
    sigterm = raise_on_sigterm()
    sigint = raise_on_sigint()
    try:
        from server.cli import main as cli_main

        code = cli_main()
    except Terminated:  # SIGTERM from here until `serve` installs its drain: exit 0, one line
        return exit_terminated(sigterm.signal_name)
    except BaseException as exc:
        if interrupted(exc, sigint):  # Ctrl-C, or what the import it interrupted made of it
            exit_interrupted()
        if sigterm.received:  # Terminated, wrapped by the import it interrupted
            return exit_terminated(sigterm.signal_name)
        raise
    if sigint.received:  # a KeyboardInterrupt something swallowed: still a Ctrl-C
        exit_interrupted()
    return code


if __name__ == "__main__":
    sys.exit(main())
