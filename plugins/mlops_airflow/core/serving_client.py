"""Tell the model server that ``champion`` moved, so it swaps before its next registry poll.

``promote`` and ``rollback`` call :func:`notify_model_server` after the alias moved. The notification is a
hint, not a command: it carries no version the server would trust; the server re-reads the registry. It is
best effort: no server configured, a server down or a refused token is logged and never fails the task
(the server's registry poll, ``MLOPS_SERVING_POLL_SECONDS``, catches the move anyway).

==========================  ====================================================================
``MLOPS_SERVING_URL``       base URL(s) of the model server, comma-separated (one per replica that
                            should hear at once); unset: no notification
``MLOPS_SERVING_TOKEN``     the server's bearer token (the same secret the server checks)
==========================  ====================================================================
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

URL_ENV = "MLOPS_SERVING_URL"
TOKEN_ENV = "MLOPS_SERVING_TOKEN"
TIMEOUT_SECONDS = 5.0

log = logging.getLogger(__name__)


def notify_model_server(model: str, event: str, version: str | None, *, logger: Any = None) -> dict[str, str]:
    """POST ``/v1/models/<model>/reload`` to every server of ``MLOPS_SERVING_URL``; never raises.

    :return: server URL -> ``ok`` or why it was not notified (empty when no server is configured).
    """
    logger = logger or log
    urls = [u.strip().rstrip("/") for u in os.environ.get(URL_ENV, "").split(",") if u.strip()]
    if not urls:
        return {}
    token = os.environ.get(TOKEN_ENV, "")
    outcome: dict[str, str] = {}
    for base in urls:
        try:
            if not token:
                raise ValueError(f"{TOKEN_ENV} is not set")
            request = urllib.request.Request(
                f"{base}/v1/models/{urllib.parse.quote(model, safe='')}/reload",
                data=json.dumps({"event": event, "version": version}).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                response.read()
            outcome[base] = "ok"
        except urllib.error.HTTPError as err:
            outcome[base] = f"HTTP {err.code}"
        except Exception as err:  # best effort: nothing here may fail a promotion that already happened
            outcome[base] = f"{type(err).__name__}: {err}"
        if outcome[base] != "ok":
            logger.warning(
                "model server %s not notified of %s of %s v%s (%s); it finds the move at its next registry poll",
                base, event, model, version, outcome[base],
            )  # fmt: skip
    return outcome
