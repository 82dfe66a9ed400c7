"""Run an iterator ahead of its consumer in a background thread, and map a
function over items on several threads at once, keeping their order.

predict.py chains two `prefetched` stages into three: reading, typing and the
feature transform of chunk i+2, the forward pass of chunk i+1, labels and the
writer for chunk i; `mapped_in_order` lets the forward pass run on consecutive
chunks at once (one ONNX Runtime call per core, each on one thread: no
intra-op hand-offs). Reading (pyarrow), the numeric transform (numpy, torch)
and ONNX Runtime release the GIL, so on two cores the stages overlap. Each queue
holds at most `depth` finished items, so memory stays bounded; items and errors
arrive in the iterator's order, so an error in a later chunk surfaces only after
the earlier ones are done, as it would without the threads."""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Deque, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

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
            _close(items)
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


def mapped_in_order(
    function: Callable[[T], R], items: Iterable[T], workers: int
) -> Iterator[R]:
    """`function(item)` for each item, up to `workers` calls running at once on
    their own threads, yielded in the items' order (one worker: in this thread).

    At most `workers` items are taken ahead of the one yielded, so memory stays
    bounded. An error, from `function` or from `items`, surfaces after the
    results before it; stopping early (an error, `break`, `close()`) cancels the
    calls not started, waits for the running ones and closes `items`."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1:
        return _mapped_here(function, items)
    return _mapped_on_threads(function, items, workers)


def _mapped_on_threads(
    function: Callable[[T], R], items: Iterable[T], workers: int
) -> Iterator[R]:
    pending: Deque[Future] = deque()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="mapped")
    source = iter(items)
    try:
        while True:
            try:
                item = next(source)
            except StopIteration:
                break
            except BaseException:
                # the items' own error comes after the results taken before it
                while pending:
                    yield pending.popleft().result()
                raise
            pending.append(pool.submit(function, item))
            if len(pending) >= workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
        _close(items)


def _mapped_here(function: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    try:
        for item in items:
            yield function(item)
    finally:
        _close(items)


def _close(items: Iterable) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        close()
