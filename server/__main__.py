import sys

# First, before the imports that take ~1.5 s: a SIGTERM from here on exits 0 with one line.
from server.start_signals import Terminated, exit_terminated, raise_on_sigterm

raise_on_sigterm()
try:
    from server.cli import main

    code = main()
except Terminated:
    code = exit_terminated()
sys.exit(code)
