"""``[core] hostname_callable`` of the native cluster's Celery workers.

In Compose each worker is a container with its own host name; on one machine every worker would report
the same one, so each native worker names itself (``MLOPS_TEST_HOSTNAME``, e.g. ``worker1``) and the
task instances it runs carry that name.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("MLOPS_TEST_HOSTNAME") or socket.getfqdn()
