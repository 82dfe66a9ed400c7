"""Progress bars for the long steps (tqdm): rows done, rows/s and the time left,
on stderr, only where someone watches.

`MODELSPHERE_PROGRESS`: `1` always shows them, `0` never; unset, they show when
stderr is a terminal and `CI` is not set (a log file or a CI run gets only the
log lines). A bar is a display, not a setting of the run: nothing about it is
saved with the run, and with bars off `progress` costs one call per step.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

PROGRESS_VARIABLE = "MODELSPHERE_PROGRESS"
ALWAYS, NEVER = "1", "0"
REFRESH_SECONDS = 0.5  # at most two redraws a second
Advance = Callable[[int], None]  # what a bar yields: called with each step's units


def shown() -> bool:
    """Whether bars are drawn in this process (see the module docstring)."""
    choice = os.environ.get(PROGRESS_VARIABLE)
    if choice in (ALWAYS, NEVER):
        return choice == ALWAYS
    return sys.stderr.isatty() and not os.environ.get("CI")


def _ignore(rows: int) -> None:
    return None


@contextmanager
def progress_bar(
    description: str,
    total: Optional[int],
    done: int = 0,
    unit: str = "rows",
    show: bool = True,
) -> Iterator[Advance]:
    """A bar for `total` units (None: unknown) with `done` already done; yields
    the function to call with each step's units. `show=False` (another process
    of a distributed run, say) gives the do-nothing function."""
    if not (show and shown()):
        yield _ignore
        return
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        initial=done,
        desc=description,
        unit=f" {unit}",
        unit_scale=True,
        leave=False,
        mininterval=REFRESH_SECONDS,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        yield bar.update
    finally:
        bar.close()
