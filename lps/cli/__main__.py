"""`python -m lps.cli ARGS`: the `lps` command without its console script."""

import sys

from lps.cli import main

sys.exit(main())
