"""RequestBatcher on its own (serving/batching.py): a real scoring thread and a
scorer that records its calls, no model and no HTTP."""

from __future__ import annotations

import asyncio
import threading
from typing import List

import numpy as np
import pytest

from modelsphere.serving.batching import RequestBatcher
from modelsphere.serving.routing import SCORING_THREAD_NAME, ScoringThread

WAIT = 10.0  # the longest a test waits for what it expects


class HeldScorer:
    """Scores records as themselves times ten; its first call waits for
    `release` and records which thread it ran on."""

    def __init__(self) -> None:
        self.calls: List[list] = []
        self.threads: List[str] = []
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, records):
        self.calls.append(list(records))
        self.threads.append(threading.current_thread().name)
        if len(self.calls) == 1:
            self.started.set()
            self.release.wait(WAIT)
        if any(record < 0 for record in records):
            raise ValueError("a negative record")
        return {"prediction": np.asarray(records) * 10}


def run_with_batcher(test, max_rows: int = 8):
    """`await test(batcher, scorer)` on a fresh loop, with a scoring thread."""
    scorer = HeldScorer()

    async def main():
        scoring = ScoringThread()
        try:
            batcher = RequestBatcher(scorer, scoring.post, max_rows)
            await asyncio.wait_for(test(batcher, scorer), WAIT)
        finally:
            scorer.release.set()
            scoring.stop()

    asyncio.run(main())
    return scorer


async def held_then(batcher, scorer, *requests):
    """The first request holds the scorer; then `requests` are queued behind it."""
    first = asyncio.ensure_future(batcher.score([0]))
    started = asyncio.get_running_loop().run_in_executor(
        None, scorer.started.wait, WAIT
    )
    assert await started
    queued = [asyncio.ensure_future(batcher.score(records)) for records in requests]
    while batcher.queued < len(requests):
        await asyncio.sleep(0.001)
    return first, queued


def test_requests_queued_behind_a_call_are_scored_in_one_on_the_scoring_thread():
    async def test(batcher, scorer):
        first, queued = await held_then(batcher, scorer, [1], [2, 3], [4])
        scorer.release.set()
        answers = await asyncio.gather(first, *queued)
        assert [list(a["prediction"]) for a in answers] == [[0], [10], [20, 30], [40]]

    scorer = run_with_batcher(test)
    assert scorer.calls == [[0], [1, 2, 3, 4]]
    assert set(scorer.threads) == {SCORING_THREAD_NAME}


def test_a_request_cancelled_while_queued_leaves_the_others_answered():
    async def test(batcher, scorer):
        first, (kept, cancelled, last) = await held_then(batcher, scorer, [1], [2], [3])
        cancelled.cancel()
        scorer.release.set()
        answers = await asyncio.gather(first, kept, last)
        assert [list(a["prediction"]) for a in answers] == [[0], [10], [30]]
        assert cancelled.cancelled()

    run_with_batcher(test)


def test_a_failed_shared_call_gives_each_request_its_own_outcome():
    async def test(batcher, scorer):
        first, (good, bad, other) = await held_then(batcher, scorer, [1], [-2], [3])
        scorer.release.set()
        assert list((await good)["prediction"]) == [10]
        assert list((await other)["prediction"]) == [30]
        with pytest.raises(ValueError, match="negative"):
            await bad
        await first

    scorer = run_with_batcher(test)
    assert scorer.calls == [[0], [1, -2, 3], [1], [-2], [3]]


def test_the_batcher_only_takes_small_requests_on_its_own_loop():
    async def test(batcher, scorer):
        assert batcher.takes(2) and not batcher.takes(3)
        elsewhere = await asyncio.get_running_loop().run_in_executor(
            None, batcher.takes, 1
        )
        assert not elsewhere

    run_with_batcher(test, max_rows=2)
