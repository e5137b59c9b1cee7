"""Answering concurrent requests together: one forward pass for the questions that arrive at about the same time.

Request threads ``submit`` an item (an image tensor and its question) and wait on the future they get back. One
worker thread takes the first waiting item and every other waiting one (up to ``max_batch`` in all), runs
``run_batch`` once on them and hands each request its own result. While requests are still being decoded
(``coming``), it waits for them up to ``max_wait`` seconds; a lone request is answered at once. Under load, requests
gather while the previous batch runs. The worker is the only thread that runs the model, so forward passes never
overlap (nor do the attention hooks of one pass see another's).

Each request is validated before it is submitted; if a batch fails anyway, its items are run again one by one, so
that only the request that fails gets the error. At most ``max_queue`` items wait: ``submit`` beyond that raises
``QueueFull`` at once instead of letting the wait grow without bound. ``close`` fails the waiting items with
``BatcherClosed`` and returns within its timeout even while a batch is still running (the worker is a daemon thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class QueueFull(Exception):
    """``max_queue`` requests are waiting already."""


class BatcherClosed(Exception):
    """The batcher was closed (the server is stopping) before the request was answered."""


@dataclass
class Arrival:
    """An item announced by ``RequestBatcher.coming``; ``arrived`` once it is submitted."""

    arrived: bool = False


class RequestBatcher(Generic[Item, Result]):
    """Batches submitted items for ``run_batch`` (items → one result per item, in order) in a worker thread.

    Args:
        run_batch: answers a list of items with one result each, in the same order.
        max_batch: items per call of ``run_batch`` at most (1: one at a time).
        max_wait: seconds the worker waits after the first item of a batch for items that are ``coming``.
        max_queue: items that may wait for the worker at once.
    """

    def __init__(self, run_batch: Callable[[list[Item]], Sequence[Result]], max_batch: int = 16,
                 max_wait: float = 0.005, max_queue: int = 256):
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError(f"max_batch and max_queue must be at least 1 and max_wait not negative; got "
                             f"{max_batch}, {max_queue}, {max_wait}")
        self.run_batch, self.max_batch, self.max_wait, self.max_queue = run_batch, max_batch, max_wait, max_queue
        self._items: deque[tuple[Item, Future]] = deque()
        self._changed = threading.Condition()
        self._coming = 0
        self._closed = False
        self._worker: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        """Items submitted and not yet taken by the worker."""
        return len(self._items)

    @contextmanager
    def coming(self) -> Iterator[Arrival]:
        """Marks an item on its way (a request being decoded) until it is submitted with the ``Arrival`` this yields,
        or the block ends: a batch that has begun waits for it, up to ``max_wait``. Without items on their way a batch
        starts at once, so that a lone request does not wait for others that are not coming."""
        arrival = Arrival()
        with self._changed:
            self._coming += 1
        try:
            yield arrival
        finally:
            with self._changed:
                if not arrival.arrived:
                    self._coming -= 1
                    self._changed.notify_all()

    def submit(self, item: Item, arrival: Arrival | None = None) -> Future:
        """A future of ``item``'s result; raises ``QueueFull`` when ``max_queue`` items wait, ``BatcherClosed`` after
        ``close``. ``arrival``: the item was announced by ``coming``, and is on its way no more."""
        future: Future = Future()
        with self._changed:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            if len(self._items) >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are waiting already")
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="tcl-request-batcher", daemon=True)
                self._worker.start()
            if arrival is not None and not arrival.arrived:
                arrival.arrived = True
                self._coming -= 1
            self._items.append((item, future))
            self._changed.notify_all()
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Refuses new items, fails the waiting ones with ``BatcherClosed`` and stops the worker after its current
        batch (waiting for it at most ``timeout`` seconds)."""
        with self._changed:
            self._closed = True
            waiting = list(self._items)
            self._items.clear()
            self._changed.notify_all()
        for _item, future in waiting:
            if future.set_running_or_notify_cancel():
                future.set_exception(BatcherClosed("the server is shutting down"))
        if self._worker is not None:
            self._worker.join(timeout)
            if self._worker.is_alive():
                logger.warning("the request batcher's worker did not stop within %.0f s", timeout)

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._answer([(item, future) for item, future in batch if future.set_running_or_notify_cancel()])

    def _next_batch(self) -> list[tuple[Item, Future]] | None:
        """The first waiting item and those that come within ``max_wait`` (None once closed)."""
        with self._changed:
            while not self._items and not self._closed:
                self._changed.wait()
            if self._closed:
                return None
            batch = [self._items.popleft()]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                if self._items:
                    batch.append(self._items.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if self._coming == 0 or remaining <= 0 or self._closed:
                    break
                self._changed.wait(remaining)
            return batch

    def _answer(self, batch: list[tuple[Item, Future]]) -> None:
        if not batch:
            return
        try:
            results = self.run_batch([item for item, _future in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except Exception as error:
            if len(batch) == 1:
                batch[0][1].set_exception(error)
                return
            logger.warning("a batch of %d requests failed (%s: %s); answering them one by one", len(batch),
                           type(error).__name__, error)
            for entry in batch:
                self._answer([entry])
            return
        for (_item, future), result in zip(batch, results):
            future.set_result(result)
