"""Dynamic batching for the server: items from concurrent requests wait in one queue, and a single worker runs them
through the model together, at most `max_batch` at a time, waiting at most `max_wait_ms` for a batch to fill.

One model call at a time (one worker thread) is deliberate: on a CPU, two concurrent calls fight for the same cores,
while one call on a batch of 32 costs little more than on one item. The event loop stays free to accept requests while
the worker computes (torch and onnxruntime release the GIL).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class MicroBatcher:
    def __init__(self, run: Callable[[list], list], max_batch: int, max_wait_ms: float):
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sft-model")
        self.batches = self.items = self.largest = 0

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.worker = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, items: list) -> list:
        """The outputs of `items`, in order, once the batches holding them ran; a failure of the model raises."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self.queue.put_nowait((item, future))
        return list(await asyncio.gather(*futures))

    def stats(self) -> dict:
        return {"batches": self.batches, "items": self.items, "largest_batch": self.largest,
                "mean_batch": round(self.items / self.batches, 2) if self.batches else 0.0,
                "max_batch": self.max_batch, "max_wait_ms": self.max_wait * 1000}

    async def _collect(self) -> list[tuple[Any, asyncio.Future]]:
        """The next batch: the first waiting item, then whatever arrives until it is full or max_wait passed."""
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [(item, future) for item, future in await self._collect() if not future.cancelled()]
            if not batch:
                continue
            try:
                outputs = await loop.run_in_executor(self.executor, self.run, [item for item, _ in batch])
            except Exception as e:  # the model failed on this batch: its requests get the error, the loop goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches, self.items = self.batches + 1, self.items + len(batch)
            self.largest = max(self.largest, len(batch))
            for (_, future), output in zip(batch, outputs):
                if not future.done():
                    future.set_result(output)
