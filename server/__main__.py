"""`python -m server` and the `sluiceway` console script (pyproject's [project.scripts], the images'
ENTRYPOINT): both start here, so both have the start-up SIGTERM handler. The script had called
`server.cli:main` directly, whose imports take ~1.5 s with SIGTERM's default action: killed by the
signal (exit -15), and as a container's PID 1 not even that (the kernel drops a signal PID 1 does
not handle), so the pod waited for its SIGKILL."""

import sys

# Standard library only, a few ms: the handler is in place before the heavy imports.
from server.start_signals import Terminated, exit_terminated, raise_on_sigterm


def main() -> int:
    """Install the start-up SIGTERM handler, then run the command line; its exit code."""
    sigterm = raise_on_sigterm()
    try:
        from server.cli import main as cli_main

        return cli_main()
    except Terminated:  # SIGTERM from here until `serve` installs its drain: exit 0, one line
        return exit_terminated(sigterm.signal_name)
    except KeyboardInterrupt:  # Ctrl-C in the imports, before the CLI's own handling of it
        print("sluiceway: interrupted", file=sys.stderr)
        return 130
    except BaseException:
        if sigterm.received:  # Terminated, wrapped by the import it interrupted
            return exit_terminated(sigterm.signal_name)
        raise


if __name__ == "__main__":
    sys.exit(main())
