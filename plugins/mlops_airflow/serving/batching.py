"""Adaptive batching: concurrent requests for the same model version scored by one predict call.

A request's rows are checked on their own first (a bad request is refused before it could meet another's
rows), then handed to the model's :class:`Batcher`. One scoring thread per served model takes the oldest
waiting request and, while the batch holds fewer than ``max_batch_rows`` rows, adds the next requests for the
same :class:`~mlops_airflow.serving.models.LoadedModel` (the same version object: a swap never mixes two
versions in one call). It waits for more at most ``max_wait_ms``, and only when traffic is concurrent: other
requests are being read and checked (:meth:`Batcher.arriving`), or the previous call merged requests or left
some waiting. A request that comes alone is scored at once. The merged answer is
split back by row offsets, so each request gets exactly its own rows' answers, in its order; the request log
and the shadow keep one row per request row.

A merged call that fails (or answers a wrong number of rows) is retried request by request, so the rows of
one request the model cannot score fail that request alone. A request whose caller goes away while it waits
(its future cancelled) is left out of the batch it would have joined; once taken into a batch, its future
can no longer be cancelled, so one caller leaving never fails the others' answers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One request's checked rows, waiting for their answer."""

    model: Any  # a LoadedModel: anything with ``predict(frame) -> frame``
    rows: pd.DataFrame
    future: Future[pd.DataFrame] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """The scoring thread of one served model (see the module docstring).

    :param name: the model (names the thread).
    :param max_rows: rows one merged call takes at most (a larger request is scored alone).
    :param max_wait_s: longest the first request waits for others while some are still arriving.
    """

    def __init__(self, name: str, max_rows: int, max_wait_s: float) -> None:
        self.name = name
        self.max_rows = max(1, max_rows)
        self.max_wait_s = max(0.0, max_wait_s)
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._arriving = 0
        self._busy = False  # the last call merged requests or left some waiting: more are likely on the way
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self.calls = 0
        self.merged_requests = 0
        self.largest_batch_rows = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Score what is waiting, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Held while a request is read and checked: the batch being formed may wait for it."""
        with self._cond:
            self._arriving += 1
        try:
            yield
        finally:
            with self._cond:
                self._arriving -= 1
                self._cond.notify_all()

    def submit(self, model: Any, rows: pd.DataFrame) -> Future[pd.DataFrame]:
        """Queue ``rows`` for ``model``; the future holds their answer (one row per row, same order)."""
        job = Job(model, rows)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the model server is stopping")
            self._queue.append(job)
            self._cond.notify_all()
        return job.future

    def _take(self) -> list[Job] | None:
        """The next batch (None once stopping with nothing left)."""
        with self._cond:
            while True:
                while not self._queue:
                    if self._stopping:
                        return None
                    self._cond.wait()
                first = self._queue.popleft()
                if first.future.set_running_or_notify_cancel():
                    break  # a request whose caller gave up (its future cancelled) is left out
            batch, rows = [first], len(first.rows)
            deadline = time.perf_counter() + self.max_wait_s
            while rows < self.max_rows:
                while self._queue and self._queue[0].model is first.model:
                    if rows + len(self._queue[0].rows) > self.max_rows:
                        return batch
                    job = self._queue.popleft()
                    if not job.future.set_running_or_notify_cancel():
                        continue  # cancelled while waiting: it joins no batch
                    batch.append(job)
                    rows += len(job.rows)
                if self._queue or self._stopping or (self._arriving == 0 and not self._busy):
                    break  # another version waits next, or nobody else is on the way: score now
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            return batch

    def _done(self, batch: list[Job]) -> None:
        with self._cond:
            self._busy = len(batch) > 1 or bool(self._queue)

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self.score(batch)
            except BaseException as err:  # never leave a request waiting
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
            self._done(batch)

    def score(self, batch: list[Job]) -> None:
        """Answer every job of ``batch`` (one model): one call for all, or one each if that fails."""
        self.calls += 1
        if len(batch) == 1:
            self._one(batch[0])
            return
        self.merged_requests += len(batch)
        model = batch[0].model
        sizes = [len(job.rows) for job in batch]
        total = sum(sizes)
        self.largest_batch_rows = max(self.largest_batch_rows, total)
        try:
            merged = pd.concat([job.rows for job in batch], ignore_index=True, copy=False)
            answer = model.predict(merged)
            if len(answer) != total:
                raise ValueError(f"answered {len(answer)} rows for {total}")
        except Exception as err:  # one request's rows may be at fault: each on its own
            log.warning("%s v%s: merged call of %d requests failed (%s); scoring them one by one", self.name,
                        getattr(model, "version", "?"), len(batch), f"{type(err).__name__}: {err}"[:300])  # fmt: skip
            for job in batch:
                self._one(job)
            return
        start = 0
        for job, size in zip(batch, sizes, strict=True):
            job.future.set_result(answer.iloc[start : start + size].reset_index(drop=True))
            start += size

    @staticmethod
    def _one(job: Job) -> None:
        try:
            job.future.set_result(job.model.predict(job.rows))
        except Exception as err:
            job.future.set_exception(err)

    def describe(self) -> dict[str, Any]:
        return {"calls": self.calls, "merged_requests": self.merged_requests, "waiting": len(self._queue),
                "largest_batch_rows": self.largest_batch_rows, "max_batch_rows": self.max_rows,
                "max_wait_ms": round(1000 * self.max_wait_s, 3)}  # fmt: skip
