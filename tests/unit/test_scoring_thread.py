"""ScoringThread on its own (serving/routing.py): posted functions and awaited
coroutines run on it in order, errors come back or are logged, and posting does
not write to an event loop's self-pipe."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from asyncio import selector_events

import pytest
from fastapi import HTTPException

from modelsphere.serving.routing import SCORING_THREAD_NAME, ScoringThread

WAIT = 10.0  # the longest a test waits for what it expects


@pytest.fixture
def scoring():
    thread = ScoringThread()
    yield thread
    thread.stop()


def held(scoring: ScoringThread) -> threading.Event:
    """Holds the scoring thread until the returned event is set."""
    release, started = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(WAIT)

    scoring.post(hold)
    assert started.wait(WAIT)
    return release


def test_posted_functions_and_coroutines_run_in_order_on_the_scoring_thread(
    scoring,
):
    ran = []

    async def work(name):
        ran.append((name, threading.current_thread().name))
        await asyncio.sleep(0)  # it runs on an event loop of its own
        return name

    async def main():
        release = held(scoring)
        scoring.post(lambda: ran.append(("posted", threading.current_thread().name)))
        answer = asyncio.ensure_future(scoring.run(work("awaited")))
        await asyncio.sleep(0.01)
        assert ran == []  # held: nothing else has run
        release.set()
        return await asyncio.wait_for(answer, WAIT)

    assert asyncio.run(main()) == "awaited"
    assert ran == [("posted", SCORING_THREAD_NAME), ("awaited", SCORING_THREAD_NAME)]


def test_an_error_of_a_coroutine_is_raised_to_its_caller(scoring):
    async def failing():
        raise ValueError("no such row")

    async def main():
        await asyncio.wait_for(scoring.run(failing()), WAIT)

    with pytest.raises(ValueError, match="no such row"):
        asyncio.run(main())


def test_a_failed_posted_function_is_logged_and_the_thread_serves_on(scoring, caplog):
    done = threading.Event()

    def failing():
        raise RuntimeError("broken batch")

    with caplog.at_level(logging.ERROR, logger="modelsphere.serving.routing"):
        scoring.post(failing)
        scoring.post(done.set)
        assert done.wait(WAIT)
    [record] = [r for r in caplog.records if r.name == "modelsphere.serving.routing"]
    assert "broken batch" in record.exc_text


def test_a_coroutine_cancelled_before_its_turn_is_not_run(scoring):
    ran = []

    async def work():
        ran.append("run")

    async def main():
        release = held(scoring)
        waiting = asyncio.ensure_future(scoring.run(work()))
        await asyncio.sleep(0.01)
        waiting.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # the thread has moved past it
        await asyncio.wait_for(scoring.run(asyncio.sleep(0)), WAIT)

    asyncio.run(main())
    assert ran == []


def test_stop_runs_the_work_given_before_it():
    scoring = ScoringThread()
    ran = []
    release = held(scoring)
    scoring.post(lambda: ran.append(1))
    release.set()
    scoring.stop()
    assert ran == [1]
    assert not scoring.thread.is_alive()


def test_posting_does_not_write_to_an_event_loops_self_pipe(scoring, monkeypatch):
    """The server's event loop posts the batcher's work: a wake-up through a
    self-pipe would cost it a write per batch (the class's docstring)."""
    writes = []
    write = selector_events.BaseSelectorEventLoop._write_to_self

    def counted(self):
        writes.append(threading.current_thread().name)
        write(self)

    monkeypatch.setattr(
        selector_events.BaseSelectorEventLoop, "_write_to_self", counted
    )
    done = threading.Event()
    for _ in range(3):
        done.clear()
        scoring.post(done.set)
        assert done.wait(WAIT)
    assert writes == []


def test_a_coroutine_runs_in_its_callers_context_variables(scoring):
    request_id = contextvars.ContextVar("request_id", default=None)

    async def work():
        return request_id.get()

    async def main():
        request_id.set("r-17")
        return await asyncio.wait_for(scoring.run(work()), WAIT)

    assert asyncio.run(main()) == "r-17"


def test_a_coroutine_on_the_scoring_thread_may_await_more_work_there():
    # its own thread, stopped only once it passed: were the inner work queued
    # behind the outer, the thread would never be free to stop
    scoring = ScoringThread()

    async def inner():
        return threading.current_thread().name

    async def outer():
        return await scoring.run(inner())

    async def main():
        return await asyncio.wait_for(scoring.run(outer()), WAIT)

    assert asyncio.run(main()) == SCORING_THREAD_NAME
    scoring.stop()


def test_work_given_after_stop_is_refused_with_a_503():
    scoring = ScoringThread()
    scoring.stop()
    with pytest.raises(HTTPException) as refused:
        scoring.post(lambda: None)
    assert refused.value.status_code == 503
    assert "shutting down" in refused.value.detail

    async def work():
        return 1

    async def main():
        await scoring.run(work())

    with pytest.raises(HTTPException, match="503"):
        asyncio.run(main())
