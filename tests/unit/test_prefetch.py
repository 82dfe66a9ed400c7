"""`prefetched`: the iterator runs ahead in a thread, bounded, in order, and errors
arrive where they would without the thread. `mapped_in_order`: calls run at
once on several threads, results and errors arrive in the items' order."""

from __future__ import annotations

import threading
import time

import pytest

from modelsphere.inference.prefetch import mapped_in_order, prefetched


def test_items_arrive_complete_and_in_order():
    assert list(prefetched(iter(range(100)), depth=2)) == list(range(100))


def test_an_empty_iterator_yields_nothing():
    assert list(prefetched(iter([]), depth=1)) == []


def recorded(count, taken):
    """range(count), each item appended to `taken` as it is taken."""
    for i in range(count):
        taken.append(i)
        yield i


def test_the_producer_runs_at_most_depth_items_ahead():
    produced = []
    stream = prefetched(recorded(20, produced), depth=2)
    assert next(stream) == 0
    time.sleep(0.3)  # give the producer every chance to run further ahead
    # item 0 consumed, 2 waiting in the queue, 1 produced and blocked on put
    assert len(produced) <= 1 + 2 + 1
    assert list(stream) == list(range(1, 20))


def test_an_error_surfaces_after_the_items_before_it():
    def items():
        yield "a"
        yield "b"
        raise ValueError("row 7 is bad")

    seen = []
    with pytest.raises(ValueError, match="row 7 is bad"):
        for item in prefetched(items(), depth=1):
            seen.append(item)
    assert seen == ["a", "b"]


def test_stopping_early_stops_the_producer():
    produced = []
    before = threading.active_count()
    stream = prefetched(recorded(10_000, produced), depth=1)
    for item in stream:
        if item == 3:
            break
    stream.close()  # what the for loop's owner does when it is collected
    assert threading.active_count() == before
    assert len(produced) < 10


def test_the_next_item_is_produced_while_the_consumer_works():
    producing_second = threading.Event()

    def items():
        yield 0
        producing_second.set()
        yield 1

    stream = prefetched(items(), depth=1)
    assert next(stream) == 0
    # Still holding item 0: without the thread, item 1 would not be started yet.
    assert producing_second.wait(timeout=30)
    assert list(stream) == [1]


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth must be >= 1"):
        list(prefetched(iter([1]), depth=0))


def test_chained_stages_pass_errors_on_and_stop_together():
    """predict.py chains two prefetched stages: an error in the first reaches the
    consumer after the items before it, and stopping early ends both threads."""

    def source():
        yield from range(3)
        raise ValueError("row 9 is bad")

    def doubled(items):
        for item in items:
            yield item * 2

    seen = []
    with pytest.raises(ValueError, match="row 9 is bad"):
        for item in prefetched(doubled(prefetched(source(), depth=1)), depth=1):
            seen.append(item)
    assert seen == [0, 2, 4]

    before = threading.active_count()
    stream = prefetched(doubled(prefetched(iter(range(10_000)), depth=1)), depth=1)
    assert next(stream) == 0
    stream.close()
    assert threading.active_count() == before


def test_mapped_results_keep_the_items_order_when_later_calls_finish_first():
    def slower_first(item):
        time.sleep(0.05 * (3 - item))
        return item * 10

    assert list(mapped_in_order(slower_first, iter(range(4)), workers=4)) == [
        0,
        10,
        20,
        30,
    ]


def test_mapped_calls_run_at_once():
    # each call waits for the other: only two calls running together get past
    both_running = threading.Barrier(2, timeout=30)

    def meet(item):
        both_running.wait()
        return item

    assert list(mapped_in_order(meet, iter(range(6)), workers=2)) == list(range(6))


def test_mapped_takes_at_most_workers_items_ahead():
    taken = []
    stream = mapped_in_order(lambda item: item, recorded(20, taken), workers=3)
    assert next(stream) == 0
    time.sleep(0.3)  # give it every chance to take more
    assert len(taken) <= 3
    assert list(stream) == list(range(1, 20))


def test_one_mapped_worker_calls_in_the_consumers_thread():
    threads = set()

    def where(item):
        threads.add(threading.get_ident())
        return item

    assert list(mapped_in_order(where, iter(range(3)), workers=1)) == [0, 1, 2]
    assert threads == {threading.get_ident()}


@pytest.mark.parametrize("workers", [1, 3])
def test_a_mapped_error_surfaces_after_the_results_before_it(workers):
    def checked(item):
        if item == 4:
            raise ValueError("row 4 is bad")
        time.sleep(0.01)
        return item

    seen = []
    with pytest.raises(ValueError, match="row 4 is bad"):
        for result in mapped_in_order(checked, iter(range(10)), workers=workers):
            seen.append(result)
    assert seen == [0, 1, 2, 3]


@pytest.mark.parametrize("workers", [1, 3])
def test_an_error_of_the_items_surfaces_after_the_results_before_it(workers):
    """predict.py's case: the reading stage fails at a chunk after the ones
    the forward pass already has in hand."""

    def items():
        yield from range(5)
        raise ValueError("chunk 5 is bad")

    def slow(item):
        time.sleep(0.02)
        return item

    seen = []
    with pytest.raises(ValueError, match="chunk 5 is bad"):
        for result in mapped_in_order(slow, items(), workers=workers):
            seen.append(result)
    assert seen == [0, 1, 2, 3, 4]


def test_stopping_mapped_early_waits_for_the_running_calls():
    running = []

    def slow(item):
        running.append(item)
        time.sleep(0.2)
        running.remove(item)
        return item

    stream = mapped_in_order(slow, iter(range(100)), workers=3)
    assert next(stream) == 0
    stream.close()
    assert running == []


@pytest.mark.parametrize("workers", [1, 2])
def test_stopping_mapped_early_closes_the_items_and_ends_the_threads(workers):
    closed = threading.Event()

    def items():
        try:
            yield from range(10_000)
        finally:
            closed.set()

    before = threading.active_count()
    source = items()  # held here: only an explicit close() ends it now
    stream = mapped_in_order(lambda item: item, source, workers=workers)
    assert next(stream) == 0
    stream.close()
    assert closed.is_set()
    assert threading.active_count() == before


def test_workers_must_be_positive_when_asked():
    with pytest.raises(ValueError, match="workers must be >= 1"):
        mapped_in_order(lambda item: item, iter([1]), workers=0)
