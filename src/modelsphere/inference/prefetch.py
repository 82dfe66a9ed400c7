"""Run an iterator ahead of its consumer in a background thread.

predict.py chains two of these into three stages: reading, typing and the feature
transform of chunk i+2, the forward pass of chunk i+1, labels and the writer for
chunk i. Reading (pyarrow), the numeric transform (numpy, torch) and ONNX Runtime
release the GIL, so on two cores the stages overlap. Each queue holds at most
`depth` finished items, so memory stays bounded; items and errors arrive in the
iterator's order, so an error in a later chunk surfaces only after the earlier
ones are done, as it would without the threads."""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_DONE = object()
POLL_SECONDS = 0.1  # how often a blocked producer checks whether to give up


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """Yield `items`, produced in a daemon thread at most `depth` items ahead.

    If the consumer stops early (an error, `break`, garbage collection), the
    producer stops at its next item, closes `items` and the thread ends."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            offer(_Failure(exc))
            return
        finally:
            # A source that is itself a generator (a prefetched stage, say) is
            # closed here, in the thread that iterates it, so it stops at once.
            close = getattr(items, "close", None)
            if close is not None:
                close()
        offer(_DONE)

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
