"""`python -m kvcluster.check history.jsonl`, until `kvcluster check` is wired in."""

import sys

from .cli import main

sys.exit(main())
