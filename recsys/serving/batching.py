"""Concurrent requests folded into one forward pass.

A lone request runs at once (no waiting window, so single-request latency is one forward pass);
while the worker is busy, new requests queue, and the next pass takes all of them, up to
``max_batch``. Under load a batch grows with the queue, which is what turns concurrency into
throughput on a CPU. The model runs on one worker thread: torch releases the GIL while it
computes, so the event loop keeps accepting and answering requests meanwhile.

A pass that fails (``handle`` raises, answers fewer items than it was given, or ``on_batch``
raises) fails that pass's callers with the error; the loop goes on to the next pass, so one bad
batch never leaves later requests waiting forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Queries scored in one pass at most; past this, a batch costs more than it saves in latency.
MAX_BATCH = 64


class MicroBatcher(Generic[Item, Result]):
    """``await submit(item)`` -> ``handle([... item ...])[i]``, batching what arrives together."""

    def __init__(
        self,
        handle: Callable[[Sequence[Item]], Sequence[Result]],
        max_batch: int = MAX_BATCH,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.handle = handle
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future[Result]] | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recsys-model")
        self._closing = False

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Refuse new items, answer every queued and running one, then free the worker.

        This is what makes a reload safe: the old run's batcher drains while the new one
        already takes the new requests.
        """
        self._closing = True
        if self._queue is not None and self._task is not None:
            # The loop answers what is queued, then returns at this mark; a cancelled loop would
            # leave an exception whose traceback keeps this batcher, and so the run, alive.
            await self._queue.put(None)
            await self._task
        self._worker.shutdown(wait=True)

    async def submit(self, item: Item) -> Result:
        if self._queue is None or self._closing:
            raise RuntimeError("this batcher is not running (not started, or stopped)")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            batch = []
            entry = await self._queue.get()
            while entry is not None:
                batch.append(entry)
                if len(batch) == self.max_batch or self._queue.empty():
                    break
                entry = self._queue.get_nowait()
            stopping = entry is None
            if not batch:
                return
            items = [item for item, _ in batch]
            try:
                results = await loop.run_in_executor(self._worker, self.handle, items)
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"the batch handler answered {len(results)} of {len(batch)} requests"
                    )
                if self.on_batch is not None:
                    self.on_batch(len(batch))
            except Exception as err:  # the whole pass failed: every caller hears why
                results = [err] * len(batch)
            for (_, future), result in zip(batch, results):
                if not future.done():
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
