"""The request log writer: scored requests collected in memory and appended to Parquet in batches.

Layout and columns: :mod:`mlops_airflow.core.request_log`. A request hands its rows over (a few references,
no copy, no I/O on the response path); a background thread writes them every ``flush_seconds`` or once
``flush_rows`` (or a quarter of ``max_bytes``) are waiting. Memory is bounded in rows and in bytes (each entry
counts the bytes of the request body its rows came from: a few rows of megabyte-long text weigh what they
are): a request that finds ``max_rows`` rows or ``max_bytes`` bytes waiting writes them itself before it
answers (back-pressure: no row is dropped while storage takes writes; only if writes keep failing beyond
twice either bound are the oldest rows dropped, and counted in ``dropped_rows``).
:meth:`RequestLog.close` (the app's shutdown) writes whatever is left, so a clean stop loses nothing. A write
that fails keeps its rows for the next attempt. One request whose rows Parquet cannot hold never blocks the
others: its rows are dropped, logged and counted (``unloggable_rows``), and the rest are written (the input
checks clean text so that this should not happen).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mlops_airflow.core import request_log
from mlops_airflow.serving.models import redacted

log = logging.getLogger(__name__)
#: bytes of request bodies the log holds in memory at most (``MLOPS_SERVING_LOG_MAX_BYTES``)
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


@dataclass
class Entry:
    """One scored request (or its shadow answer)."""

    model: str
    request_id: str
    served_at: dt.datetime
    version: str
    role: str
    threshold: float
    rows: pd.DataFrame
    answer: pd.DataFrame
    #: bytes of the request body the rows came from (what the entry holds in memory, about)
    size: int = 0

    def frame(self) -> pd.DataFrame:
        n = len(self.rows)
        meta = pd.DataFrame(
            {
                "request_id": [self.request_id] * n,
                "row": range(n),
                "served_at": pd.Series([self.served_at] * n, dtype="datetime64[us, UTC]"),
                "model_version": [self.version] * n,
                "role": [self.role] * n,
                "threshold": [self.threshold] * n,
            }
        )
        inputs = self.rows.reset_index(drop=True)
        answer = self.answer.reset_index(drop=True).drop(columns=list(inputs.columns), errors="ignore")
        if request_log.OUT_OF_DOMAIN_COLUMN in answer.columns:  # a list per row -> one text (null inside)
            marks = answer[request_log.OUT_OF_DOMAIN_COLUMN]
            answer[request_log.OUT_OF_DOMAIN_COLUMN] = [None if m is None else "; ".join(m) for m in marks]
        return pd.concat([meta, inputs, answer], axis=1)


class RequestLog:
    """Buffered, bounded, flushed-on-close writer of :mod:`mlops_airflow.core.request_log` part files."""

    def __init__(
        self,
        storage_base: str,
        flush_rows: int,
        flush_seconds: float,
        max_rows: int,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.storage_base = storage_base
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.max_rows = max(max_rows, flush_rows)
        self.max_bytes = max(1, max_bytes)
        self._pending: list[Entry] = []
        self._rows = 0
        self._bytes = 0
        self._lock = threading.Lock()  # guards _pending/_rows
        self._write_lock = threading.Lock()  # one writer at a time (the thread, or a request under back-pressure)
        self._due = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self.written_rows = 0
        self.dropped_rows = 0
        self.unloggable_rows = 0
        self.files = 0
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def append(self, entry: Entry) -> None:
        with self._lock:
            self._pending.append(entry)
            self._rows += len(entry.rows)
            self._bytes += entry.size
            rows, size = self._rows, self._bytes
        if rows >= self.max_rows or size >= self.max_bytes:
            self.flush()  # back-pressure: this request pays for the write instead of memory growing
        elif rows >= self.flush_rows or size >= self.max_bytes // 4:
            self._due.set()

    @property
    def pending_rows(self) -> int:
        return self._rows

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def would_fill(self, rows: int, size: int) -> bool:
        """Whether an entry of ``rows`` rows and ``size`` bytes makes its request write the log (back-pressure)."""
        return self._rows + rows >= self.max_rows or self._bytes + size >= self.max_bytes

    def flush(self) -> int:
        """Write every waiting row; returns how many were written."""
        with self._write_lock:
            with self._lock:
                batch, self._pending, self._rows, self._bytes = self._pending, [], 0, 0
            if not batch:
                return 0
            by_model: dict[str, list[Entry]] = defaultdict(list)
            for entry in batch:
                by_model[entry.model].append(entry)
            written = sum(self._write(model, entries) for model, entries in by_model.items())
            self.written_rows += written
            return written

    def _write(self, model: str, entries: list[Entry]) -> int:
        """Write one model's entries; an entry whose rows Parquet cannot hold is dropped, never retried."""
        try:
            try:
                frame = pd.concat([self._frame(e) for e in entries], ignore_index=True)
                self.files += len(request_log.write_part(self.storage_base, model, frame))
            except request_log.UnloggableRowsError:  # find the request(s) at fault, write the others
                entries, frames = self._loggable(model, entries)
                if not frames:
                    return 0
                frame = pd.concat(frames, ignore_index=True)
                self.files += len(request_log.write_part(self.storage_base, model, frame))
            return len(frame)
        except request_log.UnloggableRowsError as err:  # loggable one by one, not together: none can be kept
            self._drop(model, entries, err)
            return 0
        except Exception as err:  # storage trouble: keep the rows, try again next time
            self._keep(model, entries, err)
            return 0

    @staticmethod
    def _frame(entry: Entry) -> pd.DataFrame:
        try:
            return entry.frame()
        except Exception as err:
            raise request_log.UnloggableRowsError(f"{type(err).__name__}: {err}"[:500]) from err

    def _loggable(self, model: str, entries: list[Entry]) -> tuple[list[Entry], list[pd.DataFrame]]:
        """The entries whose rows Parquet can hold, and their frames; the others are dropped and counted."""
        kept: tuple[list[Entry], list[pd.DataFrame]] = ([], [])
        for entry in entries:
            try:
                frame = self._frame(entry)
                request_log.encode_part(frame)
            except request_log.UnloggableRowsError as err:
                self._drop(model, [entry], err)
                continue
            kept[0].append(entry)
            kept[1].append(frame)
        return kept

    def _drop(self, model: str, entries: list[Entry], err: Exception) -> None:
        rows = sum(len(e.rows) for e in entries)
        ids = ", ".join(e.request_id for e in entries[:5])
        self.unloggable_rows += rows
        self.last_error = redacted(f"request(s) {ids} not loggable: {err}")[:500]
        log.error("request log of %s: %d row(s) of request(s) %s dropped: %s", model, rows, ids, err)

    def _keep(self, model: str, entries: list[Entry], err: Exception) -> None:
        self.last_error = redacted(f"{type(err).__name__}: {err}")[:500]
        log.error("request log of %s not written (%s); %d entries kept", model, self.last_error, len(entries))
        with self._lock:
            self._pending[:0] = entries
            self._rows += sum(len(e.rows) for e in entries)
            self._bytes += sum(e.size for e in entries)
            # storage down for long: memory stays bounded, the oldest rows go (and are counted)
            while (self._rows > 2 * self.max_rows or self._bytes > 2 * self.max_bytes) and len(self._pending) > 1:
                dropped = self._pending.pop(0)
                self._rows -= len(dropped.rows)
                self._bytes -= dropped.size
                self.dropped_rows += len(dropped.rows)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._due.wait(self.flush_seconds)
            self._due.clear()
            try:
                self.flush()
            except Exception:
                log.exception("request log flush failed")

    def close(self) -> None:
        """Stop the thread and write what is left (the app's shutdown)."""
        self._stop.set()
        self._due.set()
        self._thread.join(timeout=60)
        self.flush()

    def describe(self) -> dict[str, Any]:
        return {"pending_rows": self._rows, "pending_bytes": self._bytes, "written_rows": self.written_rows,
                "files": self.files, "dropped_rows": self.dropped_rows, "unloggable_rows": self.unloggable_rows,
                "last_error": self.last_error}  # fmt: skip
