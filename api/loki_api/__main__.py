"""`python -m loki_api ...` is the same as the `loki` command."""

import sys

from .cli import main

sys.exit(main())
