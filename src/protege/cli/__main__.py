"""`python -m protege.cli` (also how torchrun starts a phase on every node)."""

import sys

from protege.cli import main

sys.exit(main())
