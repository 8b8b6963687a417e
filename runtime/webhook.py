"""`--webhook URL`: POST every NG event as JSON to an HTTP(S) receiver (a MES, a dashboard).

The message is the one MQTT sends (runtime/delivery.py), with the event id also in the
header `X-Edgeas-Event-Id` so that a receiver can drop a repeat before parsing. A 2xx
answer delivers it; no answer within `timeout_s`, a connection refused, a 5xx, 408 or
429 is retried with backoff (the queue waits on disk meanwhile, in order); another 4xx
means the receiver will never take it: it goes to `QUEUE/rejected/`. The stdlib's
urllib is enough: one request at a time, on the sink's own thread, never the pipeline's.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from edgeas import __version__
from edgeas.errors import ConfigError
from edgeas.runtime.delivery import OK, REJECT, RETRY, QueuedSink
from edgeas.runtime.outbox import Outbox
from edgeas.runtime.sources import redact

log = logging.getLogger("edgeas.stream")
DEFAULT_TIMEOUT_S = 5.0
_RETRY_STATUS = {408, 425, 429}


def check_webhook_url(url: str) -> str:
    shown = redact(url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--webhook {shown}: expected an http:// or https:// URL with a host",
                          hint="e.g. --webhook http://mes.local:8000/edgeas/ng")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ConfigError(f"--webhook {shown}: the port must be a number 1..65535") from None
    return url


class WebhookSink(QueuedSink):
    name = "webhook"

    def __init__(self, url: str, outbox: Outbox, station: str,
                 timeout_s: float = DEFAULT_TIMEOUT_S, drain_s: float = 5.0) -> None:
        if not timeout_s > 0:
            raise ConfigError(f"--webhook-timeout must be > 0 seconds, got {timeout_s}")
        check_webhook_url(url)  # before the base class starts its writer thread
        super().__init__(outbox, station, drain_s)
        self.url, self.timeout_s = url, float(timeout_s)
        self.last_error = ""

    def deliver(self, data: bytes) -> str:
        event = json.loads(data).get("id", "")
        request = urllib.request.Request(
            self.url, data=data, method="POST",
            headers={"Content-Type": "application/json", "X-Edgeas-Event-Id": str(event),
                     "User-Agent": f"edgeas/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
            if self.last_error:
                log.warning("webhook %s takes events again", redact(self.url))
                self.last_error = ""
            return OK
        except urllib.error.HTTPError as exc:
            exc.close()
            if 400 <= exc.code < 500 and exc.code not in _RETRY_STATUS:
                log.error("webhook %s refused event %s with HTTP %d: kept in %s/rejected",
                          redact(self.url), event, exc.code, self.outbox.dir)
                return REJECT
            self._failed(f"HTTP {exc.code}")
        except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timed out
            self._failed(str(getattr(exc, "reason", exc)))
        return RETRY

    def _failed(self, why: str) -> None:
        # one line per change of trouble, not per retry: a receiver down for an hour
        # would otherwise fill the log
        if why != self.last_error:
            log.warning("webhook %s: %s; retrying with backoff (%d queued)", redact(self.url),
                        why, self.outbox.depth)
        self.last_error = why

    def describe(self) -> dict[str, Any]:
        return {"url": redact(self.url)}
