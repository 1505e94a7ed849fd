"""The node process, I/O only: the one HTTP stack, the routes, peer links, files, the clock.

`NodeDriver` (driver.py) runs the node layer (`kvcluster.node`) with them;
`main.run_node` is the process's entry point.
"""

from .config import READ_MODES, NodeConfig
from .driver import NodeDriver

__all__ = ["READ_MODES", "NodeConfig", "NodeDriver"]
