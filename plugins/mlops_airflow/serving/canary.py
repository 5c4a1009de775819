"""The canary: a blessed ``challenger`` answers a share of live traffic, watched against the champion.

Spec ``serving.canary: {percent, min_requests, max_error_rate, max_latency_p99_ms}``. The follower keeps
``challenger`` loaded once the champion resolver proves it blessed (``resolve(..., alias="challenger")``).
A request goes to it with probability ``percent`` / 100; with a caller key (header ``X-Caller-Key``) the
choice is sticky: the same key always lands on the same side (a stable hash, the same in every worker).

Both sides' errors (a failed predict; a refused request is the caller's fault and not counted) and
server-side latencies (queueing and predict) are counted per version. Once the challenger has answered
``min_requests`` requests, it is stopped when its error rate passes ``max_error_rate`` or its p99 latency
(over its last :data:`WINDOW` requests) passes ``max_latency_p99_ms``: it takes no more traffic, the reason
is logged and shown by ``GET /v1/models/<model>`` (``canary.stopped``). A request the challenger fails is
answered by the champion: the caller never sees the canary's error. A stopped canary stays stopped until
``challenger`` names another version.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import zlib
from collections import deque
from typing import Any

log = logging.getLogger(__name__)

CALLER_KEY_HEADER = "x-caller-key"
WINDOW = 1000
BUCKETS = 10_000


class Side:
    """Counts of one side (champion or challenger) for the current canary."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latencies_ms: deque[float] = deque(maxlen=WINDOW)

    def p99(self) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def describe(self, version: str | None) -> dict[str, Any]:
        p99 = self.p99()
        return {"version": version, "requests": self.requests, "errors": self.errors,
                "error_rate": round(self.errors / self.requests, 6) if self.requests else None,
                "p99_ms": round(p99, 3) if p99 is not None else None}  # fmt: skip


class Canary:
    """The canary of one model (see the module docstring); ``config`` is the spec's ``serving.canary``."""

    def __init__(self, model: str, config: Any) -> None:
        self.model = model
        self.config = config
        self.version: str | None = None
        self.champion_version: str | None = None
        self.stopped: dict[str, Any] | None = None
        self.champion = Side()
        self.challenger = Side()
        self._lock = threading.Lock()
        self._threshold = round(float(config.percent) * BUCKETS / 100)

    def _follow(self, version: str | None) -> None:
        """Start counting afresh when ``challenger`` names another version (caller holds the lock)."""
        if version != self.version:
            self.version = version
            self.stopped = None
            self.champion, self.challenger = Side(), Side()

    def routes_to_challenger(self, challenger_version: str | None, caller_key: str | None) -> bool:
        """Whether this request goes to ``challenger`` (None: no challenger loaded)."""
        with self._lock:
            self._follow(challenger_version)
            if challenger_version is None or self.stopped is not None:
                return False
        if caller_key:
            bucket = zlib.crc32(f"{self.model}\0{caller_key}".encode()) % BUCKETS
        else:
            bucket = random.randrange(BUCKETS)
        return bucket < self._threshold

    def record(self, to_challenger: bool, version: str, ok: bool, latency_ms: float) -> None:
        """Count one answer (or failure) of either side; stop the challenger when it breaks a limit."""
        with self._lock:
            if to_challenger and version != self.version:
                return  # the challenger moved meanwhile: counted for nobody
            if not to_challenger:
                self.champion_version = version
            side = self.challenger if to_challenger else self.champion
            side.requests += 1
            side.errors += 0 if ok else 1
            if ok:
                side.latencies_ms.append(latency_ms)
            if to_challenger and self.stopped is None:
                reason = self._broken()
                if reason is not None:
                    self.stopped = {"version": self.version, "reason": reason,
                                    "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                    "challenger": self.challenger.describe(self.version),
                                    "champion": self.champion.describe(self.champion_version)}  # fmt: skip
                    log.warning("%s: canary of challenger v%s stopped, out of traffic: %s", self.model, self.version,
                                reason)  # fmt: skip

    def _broken(self) -> str | None:
        side, config = self.challenger, self.config
        if side.requests < config.min_requests:
            return None
        rate = side.errors / side.requests
        if rate > config.max_error_rate:
            champion = self.champion.errors / self.champion.requests if self.champion.requests else 0.0
            return (f"error rate {rate:.4f} ({side.errors} of {side.requests} requests) above max_error_rate "
                    f"{config.max_error_rate:g} (champion: {champion:.4f})")  # fmt: skip
        limit = config.max_latency_p99_ms
        p99 = side.p99()
        if limit is not None and p99 is not None and p99 > limit:
            theirs = self.champion.p99()
            shown = f"{theirs:.1f} ms" if theirs is not None else "n/a"
            return f"p99 latency {p99:.1f} ms above max_latency_p99_ms {limit:g} (champion: {shown})"
        return None

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {"percent": self.config.percent, "min_requests": self.config.min_requests,
                    "max_error_rate": self.config.max_error_rate,
                    "max_latency_p99_ms": self.config.max_latency_p99_ms,
                    "active": self.version is not None and self.stopped is None,
                    "challenger": self.challenger.describe(self.version),
                    "champion": self.champion.describe(self.champion_version),
                    "stopped": self.stopped}  # fmt: skip
