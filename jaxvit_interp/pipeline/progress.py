"""Progress bars that show rate and ETA on a terminal and stay silent elsewhere."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_enabled(requested: bool = True) -> bool:
    """Bars only when asked for and stderr is a terminal (logs and pipes stay clean)."""
    return bool(requested) and sys.stderr.isatty()


def progress_bar(*, total: int, desc: str, unit: str, enabled: bool = True) -> tqdm:
    return tqdm(
        total=total, desc=desc, unit=unit, disable=not progress_enabled(enabled), dynamic_ncols=True
    )
