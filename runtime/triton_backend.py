"""A remote backend: the model runs on a Triton Inference Server, the station decides.

    backend = open_backend("triton://10.0.0.5:8001/edgeas")      # gRPC
    backend = open_backend("tritonhttp://10.0.0.5:8000/edgeas")  # HTTP/REST

The edgeas record (preprocessing, levels, thresholds) comes from the served model's config
parameter `edgeas`, written by `edgeas export-triton`, so a station never re-types it.
Frames go out as float32 (N, 3, H, W) like a local model's, the raw level maps come back,
and aggregation and decisions stay on the station: same pipeline, sinks and events.

When the server goes away a request is retried (a fresh client each time, so a restarted
server is found again) until it answers or the outage is older than `outage_s`; a batch
that got no answer raises `NoAnswer`, which the pipeline counts and streams on, so a
live camera resumes its decisions when the server is back. `tritonclient` is imported
here only (the `triton` extra); `import edgeas.runtime` does not need it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from edgeas.errors import ArtifactError, ConfigError, StreamError, require
from edgeas.record import ModelRecord
from edgeas.runtime.backends import Backend, NoAnswer, squeeze_level

SCHEMES = {"triton": ("grpc", 8001), "tritonhttp": ("http", 8000)}  # REMOTE_SCHEMES
PARAMETER_KEY = "edgeas"
log = logging.getLogger("edgeas.stream")


@dataclass(frozen=True)
class TritonURL:
    protocol: str  # grpc | http
    host: str
    port: int
    model: str
    timeout_s: float | None = None  # ?timeout=S: one request
    outage_s: float | None = None  # ?outage=S: how long a batch waits for a server to return

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        scheme = "triton" if self.protocol == "grpc" else "tritonhttp"
        return f"{scheme}://{self.address}/{self.model}"


def is_remote(model: Any) -> bool:
    return isinstance(model, str) and model.split("://", 1)[0].lower() in SCHEMES


def parse_url(text: str) -> TritonURL:
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"'{text}' is not a Triton URL",
                          hint="triton://HOST:PORT/NAME (gRPC) or tritonhttp://HOST:PORT/NAME")
    protocol, default_port = SCHEMES[scheme]
    name = parts.path.strip("/")
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise ConfigError(f"{text}: bad port ({exc})") from exc
    if not parts.hostname or not name or "/" in name:
        raise ConfigError(f"{text}: expected {scheme}://HOST:PORT/NAME",
                          hint=f"e.g. {scheme}://127.0.0.1:{default_port}/edgeas")
    options: dict[str, float] = {}
    for key, values in parse_qs(parts.query, keep_blank_values=True).items():
        if key not in ("timeout", "outage"):
            raise ConfigError(f"{text}: unknown option '{key}'", hint="known: timeout, outage "
                              "(seconds), e.g. ?timeout=5&outage=60")
        try:
            options[key] = float(values[-1])
        except ValueError:
            options[key] = -1.0
        if not options[key] > 0:
            raise ConfigError(f"{text}: {key} must be a number of seconds > 0, got "
                              f"'{values[-1]}'")
    return TritonURL(protocol, parts.hostname, port, name, options.get("timeout"),
                     options.get("outage"))


def _first_line(exc: BaseException) -> str:
    message = getattr(exc, "message", None)  # tritonclient's exception has a message()
    text = str(message() if callable(message) else message or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0]


def _status(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    value = status() if callable(status) else status
    return str(value or "")


class TritonBackend(Backend):
    """`timeout_s`: one request (and the start-up checks); `outage_s`: how long one batch
    keeps retrying a server that went away before its frames count as unanswered."""

    def __init__(self, url: str, timeout_s: float = 10.0, outage_s: float = 30.0) -> None:
        self.url = parse_url(url)
        self.timeout_s = self.url.timeout_s or timeout_s
        self.outage_s = self.url.outage_s or outage_s
        self.outages = 0  # times the server went away mid-stream (and came back or not)
        self._module = require(f"tritonclient.{self.url.protocol}",
                               f"tritonclient[{self.url.protocol}]", "triton")
        # a client per thread (the HTTP one is not thread-safe); all of them closed at the end
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        self._down_since: float | None = None
        self.unanswered_batches = 0
        config = self._start_up()
        self._read_config(config)

    # ------------------------------------------------------------------ set-up

    def _client(self, fresh: bool = False):
        client = getattr(self._local, "client", None)
        if client is None or fresh:
            if client is not None:
                self._forget(client)
            kwargs: dict[str, Any] = {}
            if self.url.protocol == "http":
                kwargs = {"connection_timeout": self.timeout_s, "network_timeout": self.timeout_s}
            client = self._module.InferenceServerClient(self.url.address, **kwargs)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _forget(self, client: Any) -> None:
        with self._clients_lock:
            if client in self._clients:
                self._clients.remove(client)
        with contextlib.suppress(Exception):  # the old connection may be dead
            client.close()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.url.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        return getattr(self._client(), method)(*args, **kwargs)

    def _start_up(self) -> dict:
        where, name = self.url.address, self.url.model
        try:
            self._call("is_server_live")
        except Exception as exc:  # gRPC, HTTP and socket errors alike
            raise StreamError(f"no Triton server answers at {where} ({_first_line(exc)})",
                              hint=f"start tritonserver there, or check the port (gRPC "
                              f"{SCHEMES['triton'][1]}, HTTP {SCHEMES['tritonhttp'][1]})") from exc
        try:
            ready = self._call("is_model_ready", name)
        except Exception:  # some servers answer an unknown name with an error
            ready = False
        if not ready:
            served = self._served_models()
            listed = (f"it has: {', '.join(served) or 'none'}" if served is not None
                      else "it did not list its models")
            raise ConfigError(
                f"{self.url}: the server at {where} has no model '{name}' ready ({listed})",
                hint="name a model it serves, or load the repository written by "
                "`edgeas export-triton`")
        config = self._call("get_model_config", name, **(
            {"as_json": True} if self.url.protocol == "grpc" else {}))
        return config.get("config", config)  # gRPC wraps it, HTTP does not

    def _served_models(self) -> list[str] | None:
        """The ready models, or None where the server keeps its repository API closed
        (PyTriton asks for an access token)."""
        try:
            index = self._call("get_model_repository_index", **(
                {"as_json": True} if self.url.protocol == "grpc" else {}))
        except Exception:  # only for the error message
            return None
        models = index.get("models", []) if isinstance(index, dict) else index
        return sorted({m.get("name", "?") for m in models
                       if str(m.get("state", "READY")).upper() == "READY"})

    def _read_config(self, config: dict) -> None:
        params = config.get("parameters") or {}
        text = (params.get(PARAMETER_KEY) or {}).get("string_value")
        if not text:
            raise ArtifactError(
                f"{self.url}: model '{self.url.model}' carries no edgeas metadata (config "
                f"parameter '{PARAMETER_KEY}')",
                hint="serve a repository written by `edgeas export-triton`")
        try:
            meta = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{self.url}: config parameter '{PARAMETER_KEY}' is not JSON "
                                f"({exc})") from exc
        self.record = ModelRecord.from_json(meta, str(self.url))
        self.output_names = list(self.record.model.outputs)
        inputs = config.get("input") or []
        if len(inputs) != 1:
            raise ArtifactError(f"{self.url}: expected one input, the config has {len(inputs)}")
        self.input_name = inputs[0]["name"]
        self.input_type = str(inputs[0].get("data_type", "TYPE_FP32")).removeprefix("TYPE_")
        dims = [int(d) for d in inputs[0].get("dims", [])]
        self.max_batch = int(config.get("max_batch_size", 0) or 0)
        # max_batch_size 0: the dims are the whole shape, batch included (a fixed batch)
        self.batch = None if self.max_batch > 0 else (dims[0] if dims else 1)
        spatial = dims[-2:]
        if len(spatial) == 2 and -1 not in spatial and tuple(spatial) != self.input_hw:
            raise ArtifactError(f"{self.url}: the served input is {spatial[0]}x{spatial[1]} "
                                f"but the metadata says {self.input_hw[0]}x{self.input_hw[1]}")
        served = {o["name"] for o in config.get("output") or []}
        missing = [n for n in self.output_names if n not in served]
        if missing:
            raise ArtifactError(f"{self.url}: the served model lacks outputs {', '.join(missing)}")
        kinds = {g.get("kind", "KIND_AUTO") for g in config.get("instance_group") or []}
        self.device = f"triton {self.url.address} ({', '.join(sorted(kinds)) or 'KIND_AUTO'})"
        self.name = f"triton {self.url.protocol} {config.get('platform') or config.get('backend')}"
        self.precision = self.record.precision

    # ------------------------------------------------------------------ inference

    def _request(self, batch: np.ndarray) -> list[np.ndarray]:
        m = self._module
        data = batch.astype(np.float16) if self.input_type == "FP16" else batch
        inp = m.InferInput(self.input_name, list(data.shape), self.input_type)
        inp.set_data_from_numpy(data)
        outputs = [m.InferRequestedOutput(n) for n in self.output_names]
        result = self._call("infer", self.url.model, [inp], outputs=outputs)
        return [squeeze_level(result.as_numpy(n), n, str(self.url)) for n in self.output_names]

    def _answered(self, batch: np.ndarray) -> list[np.ndarray]:
        """One batch, retried through an outage; NoAnswer when the outage is too long."""
        delay = 0.2
        while True:
            try:
                maps = self._request(batch)
            except Exception as exc:  # the client's errors, sockets, timeouts
                if "INVALID_ARG" in _status(exc) or _status(exc) == "400":
                    raise StreamError(f"{self.url}: the server refused the request "
                                      f"({_first_line(exc)})") from exc
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                    self.outages += 1
                    log.warning("%s: no answer (%s); retrying for up to %.0f s", self.url,
                                _first_line(exc), self.outage_s)
                if now - self._down_since >= self.outage_s:
                    self.unanswered_batches += 1
                    raise NoAnswer(f"{self.url}: no answer for {now - self._down_since:.0f} s "
                                   f"({_first_line(exc)})") from exc
                time.sleep(min(delay, max(0.0, self.outage_s - (now - self._down_since))))
                delay = min(delay * 2, 2.0)
                self._client(fresh=True)  # a restarted server needs a new connection
                continue
            if self._down_since is not None:
                log.warning("%s: answering again after %.1f s", self.url,
                            time.monotonic() - self._down_since)
                self._down_since = None
            return maps

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        batch, n = self.pad(self.check_batch(batch))
        step = self.max_batch or batch.shape[0]
        parts = [self._answered(batch[i:i + step]) for i in range(0, batch.shape[0], step)]
        return [np.concatenate([p[k] for p in parts])[:n] for k in range(len(self.output_names))]

    def describe(self) -> dict[str, Any]:
        return dict(super().describe(), url=str(self.url), max_batch_size=self.max_batch,
                    outages=self.outages, unanswered_batches=self.unanswered_batches)

    def close(self) -> None:
        with self._clients_lock:
            clients = list(self._clients)
        for client in clients:
            self._forget(client)
