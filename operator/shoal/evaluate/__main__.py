"""``python -m shoal.evaluate eval ...``: the same program as ``shoal eval``."""

import sys

from .commands import main

sys.exit(main())
