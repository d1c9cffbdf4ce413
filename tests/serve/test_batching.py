"""The server's dynamic batching: items of concurrent requests share model calls, in order, never more than
max_batch at once; a failing batch fails only its own requests."""

import asyncio
import time

import pytest

from sft.serve.batching import MicroBatcher


def run(coro):
    return asyncio.run(coro)


def test_concurrent_items_share_batches_in_order():
    calls = []

    def model(items):
        calls.append(list(items))
        time.sleep(0.02)  # a model call takes time: requests arriving meanwhile join the next batch
        return [x * 10 for x in items]

    async def main():
        batcher = MicroBatcher(model, max_batch=8, max_wait_ms=20)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(20)))
        await batcher.stop()
        return results, batcher.stats()

    results, stats = run(main())
    assert results == [[i * 10, (i + 100) * 10] for i in range(20)]
    assert all(len(c) <= 8 for c in calls) and sum(len(c) for c in calls) == 40
    assert len(calls) <= 6 and stats["largest_batch"] == 8 and stats["items"] == 40


def test_max_batch_one_runs_items_alone():
    calls = []

    async def main():
        batcher = MicroBatcher(lambda items: calls.append(len(items)) or items, max_batch=1, max_wait_ms=50)
        await batcher.start()
        await asyncio.gather(*(batcher.submit([i]) for i in range(5)))
        await batcher.stop()

    start = time.perf_counter()
    run(main())
    assert calls == [1] * 5 and time.perf_counter() - start < 1  # a full batch never waits


def test_a_lone_item_waits_at_most_max_wait():
    async def main():
        batcher = MicroBatcher(lambda items: items, max_batch=32, max_wait_ms=30)
        await batcher.start()
        start = time.perf_counter()
        await batcher.submit(["x"])
        waited = time.perf_counter() - start
        await batcher.stop()
        return waited

    assert 0.025 <= run(main()) < 0.5


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    def model(items):
        if "bad" in items:
            raise ValueError("model failed")
        return items

    async def main():
        batcher = MicroBatcher(model, max_batch=4, max_wait_ms=1)
        await batcher.start()
        with pytest.raises(ValueError, match="model failed"):
            await batcher.submit(["bad"])
        ok = await batcher.submit(["fine"])
        await batcher.stop()
        return ok

    assert run(main()) == ["fine"]
