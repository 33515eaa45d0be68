"""python -m shoal.sim ARGS: the same as `shoal sim ARGS`."""

import sys

from .commands import main

sys.exit(main())
