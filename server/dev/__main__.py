"""`python -m server.dev -- CMD ...`: run CMD with PostgreSQL and Redis available."""

import sys

from server.dev.services import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
