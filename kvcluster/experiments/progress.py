"""Progress bars that work in a terminal and in Jupyter, and say nothing when off."""

from __future__ import annotations

import warnings
from typing import Any


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar (a widget in Jupyter if ipywidgets is installed, else text)."""
    if not enabled:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=True)
    with warnings.catch_warnings():
        # Without ipywidgets tqdm.auto warns, then falls back to a text bar: fine.
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm as auto

    return auto(total=total, desc=desc)
