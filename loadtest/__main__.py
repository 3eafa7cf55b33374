"""`python -m loadtest`: the same as the `sluiceway-loadtest` console script."""

import sys

from loadtest.cli import main

if __name__ == "__main__":
    sys.exit(main())
