"""``python -m fleet``: the same as ``python -m fleet.run``."""

import sys

from fleet.run import main

sys.exit(main())
