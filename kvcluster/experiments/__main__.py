"""`python -m kvcluster.experiments ...` is `kvcluster bench ...`."""

import sys

from .cli import main

sys.exit(main())
