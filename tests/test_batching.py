"""The micro-batcher: concurrent requests share a pass, stop drains, a failed pass is reported."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from recsys.serving.batching import MicroBatcher


class SlowDoubler:
    """Doubles each item; each pass takes ``delay`` s and records its size."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.sizes: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, items):
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        self.sizes.append(len(items))
        return [2 * item for item in items]


def test_concurrent_requests_share_passes_and_keep_their_own_answers():
    handle = SlowDoubler()

    async def main():
        batcher = MicroBatcher(handle, max_batch=8)
        await batcher.start()
        answers = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        await batcher.stop()
        return answers

    assert asyncio.run(main()) == [2 * i for i in range(20)]
    assert sum(handle.sizes) == 20 and max(handle.sizes) == 8  # bounded by max_batch
    assert len(handle.sizes) < 20  # passes were shared
    assert all(name.startswith("recsys-model") for name in handle.threads)


def test_a_lone_request_runs_at_once_in_a_pass_of_its_own():
    handle = SlowDoubler(delay=0.0)

    async def main():
        batcher = MicroBatcher(handle)
        await batcher.start()
        answers = [await batcher.submit(21), await batcher.submit(4)]
        await batcher.stop()
        return answers

    # Answered with nothing else queued, and not merged with the request after it: no window.
    assert asyncio.run(main()) == [42, 8] and handle.sizes == [1, 1]


def test_stop_answers_everything_queued_then_refuses_new_items():
    handle = SlowDoubler(delay=0.05)

    async def main():
        batcher = MicroBatcher(handle, max_batch=2)
        await batcher.start()
        pending = [asyncio.create_task(batcher.submit(i)) for i in range(6)]
        await asyncio.sleep(0)  # let them queue
        await batcher.stop()
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.submit(99)
        return [task.result() for task in pending]

    assert asyncio.run(main()) == [0, 2, 4, 6, 8, 10]


def test_a_failed_pass_fails_its_callers_and_the_next_pass_still_runs():
    calls = []

    def handle(items):
        calls.append(list(items))
        if 13 in items:
            raise ValueError("unlucky batch")
        return items

    async def main():
        batcher = MicroBatcher(handle)
        await batcher.start()
        with pytest.raises(ValueError, match="unlucky batch"):
            await batcher.submit(13)
        answer = await batcher.submit(7)
        await batcher.stop()
        return answer

    assert asyncio.run(main()) == 7 and calls == [[13], [7]]


def serve_one_by_one(batcher_args: dict, items: list[int]) -> list[object]:
    """Submit ``items`` one at a time; each answer, or the exception it raised."""

    async def main():
        batcher = MicroBatcher(**batcher_args)
        await batcher.start()
        answers: list[object] = []
        for item in items:
            try:
                answers.append(await asyncio.wait_for(batcher.submit(item), timeout=30))
            except (ValueError, RuntimeError) as err:
                answers.append(err)
        await batcher.stop()
        return answers

    return asyncio.run(main())


def test_a_failing_on_batch_fails_its_pass_and_the_loop_goes_on():
    seen: list[int] = []

    def on_batch(size: int) -> None:
        seen.append(size)
        if len(seen) == 1:
            raise ValueError("metrics are down")

    first, second = serve_one_by_one({"handle": list, "on_batch": on_batch}, [1, 2])
    assert isinstance(first, ValueError) and "metrics are down" in str(first)
    assert second == 2 and seen == [1, 1]


def test_a_handle_answering_too_few_fails_those_callers_instead_of_hanging():
    def loses_13(items: list[int]) -> list[int]:
        return [item for item in items if item != 13]

    lost, answered = serve_one_by_one({"handle": loses_13}, [13, 7])
    assert isinstance(lost, RuntimeError) and "answered 0 of 1 requests" in str(lost)
    assert answered == 7
