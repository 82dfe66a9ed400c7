"""A serving worker's start-up objects, kept out of the garbage collector's way.

Loading the model leaves a large heap of long-lived objects (modules, the
engine, the feature state). CPython's full collection scans every tracked
object, and a busy worker allocates fast enough to trigger one every few
seconds: each one pauses the event loop for as long as the scan takes, which
shows as the slowest requests' latency (benchmarks/results/serve_load.md).
Once the model is loaded, `freeze_startup_heap` collects what start-up left
behind and moves every object still alive into the permanent generation,
which collections skip, so they scan only what requests allocate. The cost:
an object frozen here that later becomes cyclic garbage is never freed (the
model and the modules live as long as the worker anyway).
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect start-up's garbage, then freeze every object alive; returns how
    many objects the collector now leaves alone."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
