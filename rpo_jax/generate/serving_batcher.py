"""The queue between the HTTP side (asyncio) and the one thread that owns the model.

- `Job`: one chat request (its prompt ids, its n choices) and the way back to the handler waiting for it: events put
  on the handler's asyncio queue from the batcher thread (`call_soon_threadsafe`). `cancel()` (the client went away)
  is read by the batcher (a waiting job is dropped unstarted) and by the engine between decode chunks.
- `Batcher`: a bounded queue (`submit` raises `QueueFull` when `max_queue` requests wait: the handler answers 503
  with Retry-After) and the batcher thread. It takes the choices of waiting jobs, oldest first, up to
  `max_batch_size` rows, waiting up to `batch_wait_s` for more once one is there; a job with more choices than fit
  goes on in the next batch. A batch that fails is reported to its jobs (a 500 each) and the thread goes on.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time

from rpo_jax.generate.serving_protocol import ChatRequest

log = logging.getLogger("rpo_jax.serve")


class QueueFull(Exception):
    """`max_queue` requests are already waiting."""


@dataclasses.dataclass(frozen=True)
class ChoiceDelta:
    index: int  # which of the request's n choices
    text: str  # new text for a stream


@dataclasses.dataclass(frozen=True)
class ChoiceEnd:
    index: int
    text: str  # the choice's whole text
    reason: str  # finish_reason: "stop" (EOS or a stop string) or "length"
    tokens: int  # completion tokens it counts


@dataclasses.dataclass(frozen=True)
class JobFailed:
    message: str
    status: int = 500  # 503: the server is stopping


class Job:
    """One request in the queue; built on the event loop that awaits its events."""

    def __init__(self, request: ChatRequest, prompt_ids: list[int]):
        self.request, self.prompt_ids = request, prompt_ids
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.handed_out = 0  # choices given to batches so far (batcher thread only)

    def report(self, event: ChoiceDelta | ChoiceEnd | JobFailed) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server stopped, nobody waits
            pass

    def cancel(self) -> None:
        self.cancelled.set()


class Batcher:
    def __init__(self, engine, max_batch_size: int, batch_wait_s: float, max_queue: int):
        self.engine, self.max_batch_size, self.batch_wait_s = engine, max_batch_size, batch_wait_s
        self.max_queue = max_queue
        self.waiting: collections.deque[Job] = collections.deque()
        self.dropped = 0  # jobs cancelled while waiting, never started
        self.changed = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="rpo-jax-batcher", daemon=True)

    def submit(self, job: Job) -> None:
        with self.changed:
            if self.stopping:
                raise QueueFull("the server is stopping")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (--max-queue {self.max_queue})")
            self.waiting.append(job)
            self.changed.notify()

    def queued(self) -> int:
        return len(self.waiting)

    def _take(self, rows: list[tuple[Job, int]]) -> None:
        """Moves choices of waiting jobs into `rows` (under the lock), dropping cancelled jobs."""
        while self.waiting and len(rows) < self.max_batch_size:
            job = self.waiting[0]
            if job.cancelled.is_set():
                self.waiting.popleft()
                self.dropped += job.handed_out == 0
                continue
            take = min(job.request.n - job.handed_out, self.max_batch_size - len(rows))
            rows.extend((job, job.handed_out + i) for i in range(take))
            job.handed_out += take
            if job.handed_out == job.request.n:
                self.waiting.popleft()

    def _collect(self) -> list[tuple[Job, int]]:
        rows: list[tuple[Job, int]] = []
        with self.changed:
            while not self.stopping and not rows:
                self._take(rows)
                if not rows:
                    self.changed.wait()
            deadline = time.monotonic() + self.batch_wait_s
            while not self.stopping and len(rows) < self.max_batch_size and time.monotonic() < deadline:
                self.changed.wait(deadline - time.monotonic())
                self._take(rows)
        return rows

    def _loop(self) -> None:
        while rows := self._collect():
            try:
                self.engine.run_batch(rows)
            except Exception as err:  # the server keeps serving; the client gets a 500, the log the traceback
                log.exception("a batch of %d rows failed", len(rows))
                for job in {id(job): job for job, _ in rows}.values():
                    job.report(JobFailed(f"generation failed ({type(err).__name__}); the server log has details"))
        with self.changed:
            for job in self.waiting:
                job.report(JobFailed("the server is stopping", 503))
            self.waiting.clear()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.changed:
            self.stopping = True
            self.changed.notify_all()
        self.thread.join(timeout=60)
