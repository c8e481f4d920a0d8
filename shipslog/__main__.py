"""``python -m shipslog``: the shipslog command line."""

import sys

from shipslog.tools import main

sys.exit(main())
