"""Dynamic micro-batching: concurrent predict requests for the same model are merged into one forward
pass. Nothing waits on a timer: a request that finds the model idle runs at once; requests that arrive
while a batch is running queue up and go together as the next batch (up to ``max_batch`` rows). So a lone
caller pays no batching delay, and under load batches grow by themselves (``run_alone`` even lets an idle
model's caller send its decoding along, in the same trip to the engine). Compute runs on one thread: on a
2-core machine more threads only fight with request handling.

Backpressure, as Triton's ``max_queue_size`` and queue timeout: each model's queue holds at most
``queue_size`` waiting images, and a request waits at most ``deadline_s``; beyond either it is answered
``Overloaded`` (503 with Retry-After) at once instead of piling up uploads and pixels in memory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import numpy as np

from core.errors import Overloaded

Runner = Callable[[np.ndarray], np.ndarray]
T = TypeVar("T")


@dataclass
class _Lane:
    """One model's queue: waiting items, how many rows they hold, and whether a batch of it is running."""

    waiting: list[tuple[np.ndarray, Runner, asyncio.Future[np.ndarray]]] = field(default_factory=list)
    rows: int = 0
    running: bool = False


class MicroBatcher:
    def __init__(
        self,
        max_batch: int = 32,
        threads: int = 1,
        window_s: float = 0.0,
        *,
        queue_size: int = 512,
        deadline_s: float = 10.0,
    ) -> None:
        self.max_batch = max_batch
        self.window_s = window_s  # > 0: an idle lane waits this long for company before its first batch
        self.queue_size = queue_size
        self.deadline_s = deadline_s
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tlserve-infer")
        self._lanes: dict[str, _Lane] = {}
        self.batches_run = 0  # for metrics and tests
        self.shed = 0  # requests answered "overloaded"

    def waiting_rows(self, key: str) -> int:
        lane = self._lanes.get(key)
        return lane.rows if lane is not None else 0

    async def submit(self, key: str, batch: np.ndarray, runner: Runner) -> np.ndarray:
        """Rows of ``runner(batch)``, computed together with other callers' rows for the same ``key``;
        ``Overloaded`` when the key's queue is full or the answer is not ready within the deadline."""
        loop = asyncio.get_running_loop()
        if self.idle(key):  # nothing to merge with: no queue, straight to the engine
            return await self.run_alone(key, partial(runner, batch))
        lane = self._lanes.setdefault(key, _Lane())
        if lane.waiting and lane.rows + len(batch) > self.queue_size:
            self.shed += 1
            raise Overloaded(
                f"this model's prediction queue is full ({lane.rows} images waiting, at most {self.queue_size}); "
                "retry shortly"
            )
        future: asyncio.Future[np.ndarray] = loop.create_future()
        lane.waiting.append((batch, runner, future))
        lane.rows += len(batch)
        if not lane.running:
            lane.running = True
            loop.create_task(self._drain(key, lane))
        return await self._within_deadline(future, cancel_late=True)  # a batch not yet holding it skips it

    def idle(self, key: str) -> bool:
        """Nothing of ``key`` is queued or running (and no window to wait for company): ``run_alone`` may run."""
        return key not in self._lanes and self.window_s <= 0

    async def run_alone(self, key: str, job: Callable[[], T]) -> T:
        """``job`` (one caller's forward pass, with whatever must precede it) on the inference thread at once,
        for an idle ``key``. Its lane is held as for any batch until the job ends, even past the caller's
        deadline, so that callers arriving meanwhile queue and go together next."""
        if not self.idle(key):
            raise RuntimeError(f"run_alone needs an idle lane; {key!r} is busy")
        loop = asyncio.get_running_loop()
        lane = self._lanes[key] = _Lane(running=True)
        work = loop.run_in_executor(self._executor, job)

        def finished(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                self.batches_run += 1
            if lane.waiting:
                loop.create_task(self._drain(key, lane))
            else:
                lane.running = False
                self._lanes.pop(key, None)

        work.add_done_callback(finished)
        return await self._within_deadline(work, cancel_late=False)  # the job runs on: its lane stays held

    async def _within_deadline(self, answer: asyncio.Future[T], *, cancel_late: bool) -> T:
        """``answer`` once ready, or ``Overloaded`` (counted as shed) past ``deadline_s``."""
        try:
            return await asyncio.wait_for(asyncio.shield(answer), self.deadline_s)
        except TimeoutError:
            self.shed += 1
            if cancel_late:
                answer.cancel()
            raise Overloaded(
                f"the prediction was not ready within {self.deadline_s:g} s (the model is overloaded); retry shortly"
            ) from None

    def _take(self, lane: _Lane) -> list[tuple[np.ndarray, Runner, asyncio.Future[np.ndarray]]]:
        taken, rows = [], 0
        while lane.waiting and (not taken or rows + len(lane.waiting[0][0]) <= self.max_batch):
            item = lane.waiting.pop(0)
            lane.rows -= len(item[0])
            if item[2].done():  # its caller was already answered (deadline): nobody waits for it
                continue
            taken.append(item)
            rows += len(item[0])
        return taken

    async def _drain(self, key: str, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.window_s > 0:
                await asyncio.sleep(self.window_s)
            while lane.waiting:
                items = self._take(lane)
                if not items:
                    continue
                runner = items[-1][1]  # the newest predictor for this key (all callers share one model)
                try:
                    out = await loop.run_in_executor(self._executor, runner, np.concatenate([b for b, _, _ in items]))
                    self.batches_run += 1
                except Exception as exc:  # every caller of the batch hears the failure
                    for _, _, fut in items:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                start = 0
                for batch, _, fut in items:
                    if not fut.done():
                        fut.set_result(out[start : start + len(batch)])
                    start += len(batch)
        finally:
            lane.running = False
            if not lane.waiting:
                self._lanes.pop(key, None)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
