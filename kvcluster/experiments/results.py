"""Saving results so that a number can always be traced to the run that made it.

Every experiment writes a CSV (one row per measurement, every parameter a
column) and, beside it, a JSON sidecar with the machine, the software versions
and the parameters: on a shared 2-core machine a latency means little without
the load average and core count it was measured under.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from .. import __version__


def machine_info() -> dict[str, Any]:
    """Where and with what a run happened."""
    import numpy
    import tornado

    try:
        load = list(os.getloadavg())
    except OSError:  # not available on every platform
        load = []
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "loadavg": load,
        "python": sys.version.split()[0],
        "kvcluster": __version__,
        "tornado": tornado.version,
        "pandas": pd.__version__,
        "numpy": numpy.__version__,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def save(
    df: pd.DataFrame, path: str | os.PathLike[str], *, experiment: str, parameters: dict[str, Any]
) -> Path:
    """Write `df` to `path` (CSV) and the metadata beside it (`.json`); return the CSV path."""
    csv = Path(path)
    csv.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(csv, index=False)
    meta = {
        "experiment": experiment,
        "rows": len(df),
        "columns": list(map(str, df.columns)),
        "parameters": _jsonable(parameters),
        "machine": machine_info(),
    }
    sidecar(csv).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return csv


def sidecar(csv: str | os.PathLike[str]) -> Path:
    """The metadata file that belongs to a results CSV."""
    return Path(csv).with_suffix(".json")


def load(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A saved result and its metadata."""
    meta = json.loads(sidecar(path).read_text(encoding="utf-8"))
    return pd.read_csv(path), meta
