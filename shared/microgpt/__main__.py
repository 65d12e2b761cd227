"""`python -m microgpt` runs the CLI."""

import sys

from microgpt.cli import main

sys.exit(main())
