"""`python -m kvcluster.sim`: the same as `kvcluster sim`."""

import sys

from .cli import main

sys.exit(main())
