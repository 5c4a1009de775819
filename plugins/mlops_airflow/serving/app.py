"""The model server's HTTP app (FastAPI): predict, model pages, health, and the reload notification.

==================================  ==========================================================================
``POST /v1/models/<model>/predict``  rows -> ``{"model", "model_version", "request_id", "predictions"}``
``POST /invocations``               ``mlflow models serve``'s endpoint, for the default model:
                                    ``{"predictions": [...]}`` (version and request id in headers)
``GET /v1/models`` / ``/<model>``   served version, data hash, promoted at, gate summary, last load error,
                                    batching counts, the canary's counts and why it stopped
``POST /v1/models/<model>/reload``  re-read the registry now (sent by ``promote`` and ``rollback``)
``GET /health``, ``/ping``          the process is up (no token: for probes)
``GET /ready``                      every served model has a version loaded (no token: for probes; the names of
                                    the models still waiting only with the token)
==================================  ==========================================================================

Every other endpoint needs ``Authorization: Bearer $MLOPS_SERVING_TOKEN`` (compared in constant time, its
length included: SHA-256 digests are compared). A caller that hangs up before its body is complete gets
``400 CLIENT_DISCONNECTED`` (nothing scored nor logged as a server error).
Every response body, errors included, is strict JSON written by :mod:`mlops_airflow.core.encoding` (no NaN,
valid UTF-8 whatever a request echoes). Under ``serving.out_of_domain: flag`` a prediction whose row lies
outside the spec's domain carries ``"out_of_domain": ["<column>: <value> <rule>", ...]``; the model page
counts those rows (``out_of_domain_rows``).
Request ids: the client's ``X-Request-Id`` when it is a short plain token, else a new one; label feedback
joins on it (:func:`mlops_airflow.core.request_log.live_metrics`).

A request's rows are checked on their own, then scored together with the other requests waiting for the same
version (:mod:`mlops_airflow.serving.batching`); the request log keeps one row per request row. Under
``serving.canary`` a share of requests is answered by ``challenger`` (:mod:`mlops_airflow.serving.canary`;
logged with role ``champion``, the answer production served, and the challenger's version).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from mlops_airflow.core import encoding
from mlops_airflow.core.errors import MlopsError
from mlops_airflow.core.request_log import CHALLENGER_ROLE, CHAMPION_ROLE, OUT_OF_DOMAIN_COLUMN
from mlops_airflow.core.spec import ModelSpec
from mlops_airflow.serving.batching import Batcher
from mlops_airflow.serving.canary import CALLER_KEY_HEADER, Canary
from mlops_airflow.serving.inputs import Checked, InputError, Limits, check_rows, parse_body
from mlops_airflow.serving.models import NOTIFY_DIR_ENV, Follower, LoadedModel, ModelSlot, remove_stale_copies
from mlops_airflow.serving.request_log import Entry, RequestLog
from mlops_airflow.serving.settings import ServingSettings

log = logging.getLogger(__name__)
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # the whole header (fullmatch: no trailing newline)
#: bodies up to this size are parsed and checked on the event loop (a thread hop costs more than the work)
INLINE_BODY_BYTES = 16 * 1024


class ApiError(MlopsError):
    def __init__(self, status: int, message: str, code: str = "BAD_REQUEST", **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra


class EncodedJSONResponse(JSONResponse):
    """A JSON response written by :func:`mlops_airflow.core.encoding.dumps`: never NaN nor a lone
    surrogate, whatever the content echoes."""

    def render(self, content: Any) -> bytes:
        return encoding.dumps(content, separators=(",", ":")).encode("utf-8")


class Server:
    """What the endpoints share: the slots, the follower, the request log and the shadow scorer."""

    def __init__(self, settings: ServingSettings, specs: list[ModelSpec], client: Any, storage_base: str) -> None:
        self.settings = settings
        self.slots = {spec.name: ModelSlot(spec) for spec in specs}
        self.follower = Follower(client, self.slots, settings.poll_seconds, settings.signing_key,
                                 os.environ.get(NOTIFY_DIR_ENV) or None)  # fmt: skip
        wait = settings.max_wait_ms / 1000
        self.batchers = {name: Batcher(name, settings.max_batch_rows, wait) for name in self.slots}
        self.canaries = {spec.name: Canary(spec.name, spec.serving.canary) for spec in specs if spec.serving.canary}
        self.request_log = RequestLog(
            storage_base, settings.log_flush_rows, settings.log_flush_seconds, settings.log_max_rows,
            settings.log_max_bytes,
        )  # fmt: skip
        self._shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
        self._shadow_waiting = threading.BoundedSemaphore(settings.shadow_queue)
        self.shadow_skipped = 0
        self.out_of_domain_rows = dict.fromkeys(self.slots, 0)
        self._counts = threading.Lock()

    def start(self) -> None:
        remove_stale_copies(models=list(self.slots))
        self.request_log.start()
        for batcher in self.batchers.values():
            batcher.start()
        self.follower.start()

    def stop(self) -> None:
        for batcher in self.batchers.values():
            batcher.stop()  # requests already queued are answered
        self.follower.stop()
        self._shadow_pool.shutdown(wait=True)  # shadow answers still queued are scored and logged
        self.request_log.close()
        self.follower.release_all()  # the downloaded version copies

    def slot(self, model: str) -> ModelSlot:
        slot = self.slots.get(model)
        if slot is None:
            raise ApiError(404, f"no model {model!r} is served here; served: {sorted(self.slots)}", "NOT_FOUND")
        return slot

    def default_model(self) -> str:
        if self.settings.default_model:
            return self.settings.default_model
        if len(self.slots) == 1:
            return next(iter(self.slots))
        raise ApiError(404, "several models are served: set MLOPS_SERVING_DEFAULT_MODEL for /invocations, or "
                            "use /v1/models/<model>/predict", "NOT_FOUND")  # fmt: skip

    def prepare(self, slot: ModelSlot, raw: bytes) -> tuple[LoadedModel, Checked]:
        """The version that answers and the request's checked rows (nothing here depends on other requests)."""
        spec = slot.spec
        model = slot.current  # taken once: this request finishes on this version whatever swaps meanwhile
        if model is None:
            failed = slot.last_error
            why = (
                f"version {failed['version']} ({failed['alias']}): {failed['error']}"
                if failed
                else slot.registry_error or "no version holds alias 'champion' yet"
            )
            raise ApiError(503, f"{spec.name}: no version loaded ({why})", "NOT_READY")
        limits = Limits(spec.serving.max_rows, self.settings.max_columns)
        try:
            checked = check_rows(spec, parse_body(raw, spec.model_features, limits), spec.serving.max_rows)
        except InputError as err:
            raise ApiError(err.status, str(err), "INVALID_INPUT", problems=err.problems) from None
        return model, checked

    async def score(
        self, slot: ModelSlot, raw: bytes, request_id: str, caller_key: str | None = None
    ) -> tuple[LoadedModel, Any]:
        """Check, score (merged with concurrent requests) and log one request."""
        batcher = self.batchers[slot.spec.name]
        with batcher.arriving():
            if len(raw) <= INLINE_BODY_BYTES:
                model, checked = self.prepare(slot, raw)
            else:
                model, checked = await run_in_threadpool(self.prepare, slot, raw)
            canary = self.canaries.get(slot.spec.name)
            challenger = slot.challenger
            chosen = model
            if canary is not None and challenger is not None and challenger.version != model.version:
                if canary.routes_to_challenger(challenger.version, caller_key):
                    chosen = challenger
            elif canary is not None:
                canary.routes_to_challenger(None, None)
            served_at = dt.datetime.now(dt.UTC)
            started = time.perf_counter()
            future = batcher.submit(chosen, checked.rows)
        try:
            answer = await asyncio.wrap_future(future)
        except Exception:
            if canary is None or chosen is model:
                if canary is not None:
                    canary.record(False, model.version, False, 0.0)
                raise
            canary.record(True, chosen.version, False, 0.0)  # the canary failed: the champion answers
            log.warning("%s: challenger v%s failed request %s; answered by the champion", slot.spec.name,
                        chosen.version, request_id, exc_info=True)  # fmt: skip
            chosen, started = model, time.perf_counter()
            answer = await asyncio.wrap_future(batcher.submit(model, checked.rows))
        if canary is not None:
            canary.record(chosen is not model, chosen.version, True, 1000 * (time.perf_counter() - started))
        size = len(raw)
        if self.request_log.would_fill(len(checked.rows), size):
            return chosen, await run_in_threadpool(self.finish, slot, chosen, checked, answer, request_id, served_at,
                                                   size)  # fmt: skip
        return chosen, self.finish(slot, chosen, checked, answer, request_id, served_at, size)

    def finish(
        self, slot: ModelSlot, model: LoadedModel, checked: Checked, answer: Any, request_id: str,
        served_at: dt.datetime, size: int = 0,
    ) -> Any:  # fmt: skip
        """Mark out-of-domain rows, log the request and hand it to the shadow; the answer frame."""
        spec = slot.spec
        rows = checked.rows
        if checked.out_of_domain is not None:  # serving.out_of_domain: flag; the request log keeps the marks too
            marks = [reasons or None for reasons in checked.out_of_domain]
            answer = answer.assign(**{OUT_OF_DOMAIN_COLUMN: marks})
            with self._counts:
                self.out_of_domain_rows[spec.name] += sum(mark is not None for mark in marks)
        self.request_log.append(
            Entry(spec.name, request_id, served_at, model.version, CHAMPION_ROLE, model.threshold, rows, answer, size)
        )
        shadow = slot.shadow
        if shadow is not None and shadow.version != model.version:
            if self._shadow_waiting.acquire(blocking=False):
                self._shadow_pool.submit(self._shadow, shadow, rows, request_id, served_at, size)
            else:
                self.shadow_skipped += 1
        return answer

    def _shadow(self, shadow: LoadedModel, rows: Any, request_id: str, served_at: dt.datetime, size: int) -> None:
        try:
            answer = shadow.predict(rows)
            entry = Entry(shadow.name, request_id, served_at, shadow.version, CHALLENGER_ROLE, shadow.threshold, rows,
                          answer, size)  # fmt: skip
            self.request_log.append(entry)
        except Exception:
            log.exception("shadow scoring of %s v%s failed", shadow.name, shadow.version)
        finally:
            self._shadow_waiting.release()


def answer_records(predictions: Any) -> list[dict[str, Any]]:
    """The answer frame as records of plain Python values (column lists zipped: ``DataFrame.to_dict`` costs
    ten times more on a 1-row answer); the out-of-domain mark only on the rows that have one."""
    names = [str(name) for name in predictions.columns]
    columns = [predictions[name].tolist() for name in predictions.columns]
    records = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
    if OUT_OF_DOMAIN_COLUMN in names:
        for record in records:
            if record[OUT_OF_DOMAIN_COLUMN] is None:
                del record[OUT_OF_DOMAIN_COLUMN]
    return records


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes (never held whole beyond it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body of {declared} bytes is larger than MLOPS_SERVING_MAX_BODY_BYTES ({limit})",
                       "REQUEST_TOO_LARGE")  # fmt: skip
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"body larger than MLOPS_SERVING_MAX_BODY_BYTES ({limit} bytes)",
                               "REQUEST_TOO_LARGE")  # fmt: skip
            chunks.append(chunk)
    except ClientDisconnect:  # the caller's doing, not the server's: no error logged, nothing scored
        raise ApiError(400, "the client closed the connection before the whole body arrived",
                       "CLIENT_DISCONNECTED") from None  # fmt: skip
    return b"".join(chunks)


def request_id_of(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex


def create_app(server: Server) -> FastAPI:
    """The app over a :class:`Server`; the server's threads start and stop with the app (lifespan)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.start()
        if server.follower.notify_dir is not None:
            # One of several workers sharing the port: it accepts connections only once it holds its models'
            # champion (or knows why not), so /ready answered by another worker holds for this one too.
            await asyncio.to_thread(server.follower.first_pass.wait)
        try:
            yield
        finally:
            await asyncio.to_thread(server.stop)

    app = FastAPI(title="mlops-airflow model server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, default_response_class=EncodedJSONResponse)  # fmt: skip
    # digests of equal length: the comparison takes the same time whatever the caller sends, its length too
    token = hashlib.sha256(server.settings.token.encode()).digest()

    def holds_token(request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        offered = hashlib.sha256(given.strip().encode()).digest()
        return hmac.compare_digest(offered, token) and scheme.lower() == "bearer"

    async def authenticated(request: Request) -> None:  # async: no thread hop per request, token or not
        if not holds_token(request):
            raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer $MLOPS_SERVING_TOKEN)",
                           "UNAUTHENTICATED")  # fmt: skip

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        body = {"error_code": err.code, "message": str(err), **err.extra}
        return EncodedJSONResponse(body, err.status, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return EncodedJSONResponse({"error_code": "INTERNAL_ERROR", "message": f"{type(err).__name__}"}, 500)

    def answer(model: LoadedModel, predictions: Any, request_id: str, envelope: dict[str, Any] | None) -> Response:
        records = answer_records(predictions)
        headers = {"X-Model-Version": model.version, "X-Request-Id": request_id}
        return EncodedJSONResponse({**(envelope or {}), "predictions": records}, headers=headers)

    async def predict(model_name: str, request: Request, mlflow_style: bool) -> Response:
        slot = server.slot(model_name)
        raw = await read_body(request, server.settings.max_body_bytes)
        request_id = request_id_of(request)
        model, predictions = await server.score(slot, raw, request_id, request.headers.get(CALLER_KEY_HEADER))
        envelope = None if mlflow_style else {"model": model_name, "model_version": model.version,
                                              "request_id": request_id}  # fmt: skip
        return answer(model, predictions, request_id, envelope)

    guarded = [Depends(authenticated)]

    @app.post("/v1/models/{model}/predict", dependencies=guarded)
    async def predict_model(model: str, request: Request) -> Response:
        return await predict(model, request, mlflow_style=False)

    @app.post("/invocations", dependencies=guarded)
    async def invocations(request: Request) -> Response:
        return await predict(server.default_model(), request, mlflow_style=True)

    @app.get("/v1/models", dependencies=guarded)
    async def models() -> dict[str, Any]:
        return {"models": [slot.describe() for slot in server.slots.values()]}

    @app.get("/v1/models/{model}", dependencies=guarded)
    async def model_page(model: str) -> dict[str, Any]:
        canary = server.canaries.get(model)
        return {**server.slot(model).describe(), "request_log": server.request_log.describe(),
                "shadow_skipped": server.shadow_skipped, "out_of_domain": server.slot(model).spec.serving.out_of_domain,
                "out_of_domain_rows": server.out_of_domain_rows[model], "batching": server.batchers[model].describe(),
                "canary": canary.describe() if canary else None, "pid": os.getpid()}  # fmt: skip

    @app.post("/v1/models/{model}/reload", dependencies=guarded, status_code=202)
    async def reload(model: str) -> dict[str, Any]:
        server.slot(model)
        server.follower.notify(model)
        return {"model": model, "reload": "scheduled"}

    @app.get("/health")
    @app.get("/ping")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(request: Request) -> JSONResponse:
        waiting = sorted(name for name, slot in server.slots.items() if slot.current is None)
        body: dict[str, Any] = {"ready": not waiting and bool(server.slots), "waiting": len(waiting)}
        if holds_token(request):  # which models this server holds is for the token's holders only
            body["waiting_for"] = waiting
        return EncodedJSONResponse(body, 200 if body["ready"] else 503)

    return app
