"""`python -m loki_client <command>`: the terminal client without the server installed."""

import sys

from ._cli import main

sys.exit(main(sys.argv[1:]))
