"""Small requests that arrive together are scored together, off the event loop.

A request of up to `serve.batch_max_rows` records is parsed and validated on the
event loop; its records then join `RequestBatcher`'s queue, and the worker's
scoring thread takes them from there. While the engine scores one batch, the loop
keeps reading and validating the next requests; when the batch is done, the
scoring thread hands its answers back to the loop and at once takes every record
queued meanwhile as the next batch (at most `batch_max_rows` records): one engine
call for every request that came in while the last one ran. Nothing waits for a
batch to fill: a request that finds the engine idle is scored at once, alone, so
a lone client sees no added latency; the batches grow only as fast as requests
queue up behind the engine.

A request on the worker's only open connection is not batched: HTTP/1.1
answers a connection's requests one after the other, so no other request can
arrive while it is scored, and it is scored at once on the loop, without the
hand-off to the scoring thread and back (`lone_connection`, set per request by
serving.routing from the scope serving.protocol fills).

A batch whose scoring fails (a row the model cannot score) is scored again one
request at a time, so each request gets its own answer or its own error, with
the positions of its own records.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

Columns = Dict[str, np.ndarray]
Score = Callable[[Sequence[Any]], Columns]
# runs a function on the scoring thread, soon (it does not wait for it)
Post = Callable[[Callable[[], None]], None]


@dataclass
class _Waiting:
    records: Sequence[Any]
    answer: asyncio.Future = field(repr=False)


Answer = Tuple[_Waiting, Optional[Columns], Optional[BaseException]]
# the request being handled came on the worker's only open connection (each
# request's task has its own value; unknown, as in process: False)
lone_connection: ContextVar[bool] = ContextVar("lone_connection", default=False)


class RequestBatcher:
    """One per worker, made on its event loop. `await score(records)` gives the
    request's own columns (`prediction`, `<class>_probability`...)."""

    def __init__(self, score: Score, post: Post, max_rows: int):
        """`score(records)` runs on the scoring thread, posted there by `post`."""
        self._score, self._post, self.max_rows = score, post, max_rows
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._queue: Deque[_Waiting] = deque()
        self._draining = False  # the scoring thread has the queue in hand

    def takes(self, rows: int) -> bool:
        """A request of `rows` records, handled on this batcher's loop (a large
        request is handled whole on the scoring thread, and scores itself),
        that others may join (not on the worker's only connection)."""
        return (
            rows <= self.max_rows
            and not lone_connection.get()
            and _running_loop() is self._loop
        )

    @property
    def queued(self) -> int:
        """Requests waiting for the scoring thread to take them."""
        with self._lock:
            return len(self._queue)

    async def score(self, records: Sequence[Any]) -> Columns:
        answer = self._loop.create_future()
        with self._lock:
            self._queue.append(_Waiting(records, answer))
            idle, self._draining = not self._draining, True
        if idle:
            self._post(self._drain)
        return await answer

    # -- on the scoring thread ---------------------------------------------

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch = self._next_batch()
                if not batch:
                    self._draining = False
                    return
            self._loop.call_soon_threadsafe(_answer_all, self._scored(batch))

    def _next_batch(self) -> List[_Waiting]:
        """Queued requests in arrival order, up to `max_rows` records (at least
        one request, if any is queued)."""
        batch: List[_Waiting] = []
        rows = 0
        while self._queue:
            size = len(self._queue[0].records)
            if batch and rows + size > self.max_rows:
                break
            batch.append(self._queue.popleft())
            rows += size
        return batch

    def _scored(self, batch: List[_Waiting]) -> List[Answer]:
        records = [record for waiting in batch for record in waiting.records]
        try:
            columns = self._score(records)
        except Exception as exc:  # noqa: BLE001 - handed to the request(s)
            if len(batch) == 1:
                return [(batch[0], None, exc)]
            # each request on its own: its own answer, or its own error
            return [answer for waiting in batch for answer in self._scored([waiting])]
        answers: List[Answer] = []
        start = 0
        for waiting in batch:
            end = start + len(waiting.records)
            own = {name: array[start:end] for name, array in columns.items()}
            answers.append((waiting, own, None))
            start = end
        return answers


def _answer_all(answers: List[Answer]) -> None:
    """On the loop: each request's columns, or its error."""
    for waiting, columns, error in answers:
        if waiting.answer.done():  # the request was cancelled meanwhile
            continue
        if error is not None:
            waiting.answer.set_exception(error)
        else:
            waiting.answer.set_result(columns)


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
