"""The live view of a running Cluster, served by the harness (never by the nodes).

`cluster.dashboard()` (or `kvcluster up --dashboard`) starts it and gives its
URL. Modules, one job each:

- `server`: `Dashboard`, the tornado app on its own thread; the token; the page.
- `feed`: the frames the page draws (status polls, events, faults, messages).
- `topology`: process states and faulted links, from the Cluster's bookkeeping.
- `tail`: following the events files as they grow.
- `controls`: checking the page's requests and running them on the Cluster.
- `load`: the small client load the page starts and stops.
- `static/`: the page itself (plain JavaScript and SVG, no build step).
"""

from .server import Dashboard

__all__ = ["Dashboard"]
