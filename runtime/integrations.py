"""The sinks that connect a station to the line, made from the stream's options:
`--mqtt`, `--webhook`, `--on-ng`, `--metrics` (runtime/sinks.py `build_sinks` calls this
after the events writer, so that they know whether event files exist).

Each delivery sink has its own on-disk queue, `QUEUE_DIR/mqtt` and `QUEUE_DIR/webhook`,
QUEUE_DIR being `--queue-dir` or ~/.local/state/edgeas/queue/STATION, so that a station
restarted by systemd finds what it had not delivered yet. Nothing here prints a password.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from edgeas.errors import ConfigError
from edgeas.runtime.delivery import default_queue_dir
from edgeas.runtime.outbox import Outbox
from edgeas.runtime.sink import Sink

log = logging.getLogger("edgeas.stream")

if TYPE_CHECKING:
    from rich.console import Console

    from edgeas.runtime.station import StreamOptions


def station_name(options: StreamOptions) -> str:
    return options.station or socket.gethostname().split(".")[0] or "edgeas"


def queue_root(options: StreamOptions) -> Path:
    return Path(options.queue_dir) if options.queue_dir else (
        default_queue_dir() / station_name(options))


def check_integrations(options: StreamOptions) -> None:
    """The integration options checked before the model and the source are opened: a bad
    URL, command or address is a usage error (exit 2) at once, not after a model load."""
    if options.station is not None:
        from edgeas.runtime.mqtt import check_station_name

        check_station_name(options.station)
    if options.mqtt:
        from edgeas.runtime.mqtt import parse_mqtt_url

        target = parse_mqtt_url(options.mqtt)
        # a setting that would be ignored is a mistake worth hearing about
        if options.mqtt_password_file and target.user is None:
            raise ConfigError("--mqtt-password-file needs a user in the URL",
                              hint="e.g. --mqtt mqtt://edge@broker/factory")
        if options.mqtt_ca and not target.tls:
            raise ConfigError(f"--mqtt-ca {options.mqtt_ca}: only mqtts:// uses a CA file",
                              hint="use mqtts://HOST[:8883]/PREFIX")
    if options.webhook:
        from edgeas.runtime.webhook import check_webhook_url

        check_webhook_url(options.webhook)
    if options.on_ng:
        from edgeas.runtime.onng import parse_command

        parse_command(options.on_ng)
    if options.metrics:
        from edgeas.runtime.server import parse_address

        parse_address(options.metrics, 9100, flag="--metrics")
    if not options.queue_budget_mb > 0:
        raise ConfigError(f"--queue-budget-mb must be > 0, got {options.queue_budget_mb}")


def add_integration_sinks(options: StreamOptions, out: list[Sink],
                          console: Console | None = None) -> None:
    """The sinks asked for, appended to `out` in the order they are fed, each as soon as
    it is made: when a later one fails, the caller closes those already made."""
    station = station_name(options)
    budget = int(options.queue_budget_mb * 2**20)
    if options.mqtt:
        from edgeas.runtime.mqtt import MqttSink, parse_mqtt_url, read_password

        target = parse_mqtt_url(options.mqtt)
        password = read_password(options.mqtt_password_file)
        sink = MqttSink(target, Outbox(queue_root(options) / "mqtt", budget), station,
                        password=password, ca_file=options.mqtt_ca,
                        with_thumbnail=options.mqtt_thumbnail)
        out.append(sink)
        if console is not None:
            auth = " (password set)" if password is not None else ""
            console.print(f"mqtt: {target.url()}{auth}, topics {sink.events_topic} and "
                          f"{sink.status_topic}; queue {sink.outbox.dir}")
    if options.webhook:
        from edgeas.runtime.webhook import WebhookSink

        hook = WebhookSink(options.webhook, Outbox(queue_root(options) / "webhook", budget),
                           station, timeout_s=options.webhook_timeout_s)
        out.append(hook)
        if console is not None:
            console.print(f"webhook: POST {hook.describe()['url']} (timeout "
                          f"{hook.timeout_s:g} s); queue {hook.outbox.dir}")
    if options.on_ng:
        from edgeas.runtime.onng import OnNgSink

        out.append(OnNgSink(options.on_ng, station, options.on_ng_timeout_s))
        if console is not None:
            console.print(f"on NG: {options.on_ng} (event JSON on stdin, at most one per "
                          f"source, killed after {options.on_ng_timeout_s:g} s)")
    if options.metrics:
        from edgeas.runtime.metrics import MetricsSink
        from edgeas.runtime.server import parse_address

        metrics = MetricsSink(parse_address(options.metrics, 9100, flag="--metrics"))
        out.append(metrics)
        if console is not None:
            console.print(f"metrics: {metrics.url}")


def page_metrics(sinks: list[Sink]) -> Sink | None:
    """The metrics the live page serves on /metrics: those of --metrics, or new ones; None
    (and the page without /metrics) when prometheus-client is not installed."""
    from edgeas.errors import DependencyError
    from edgeas.runtime.metrics import MetricsSink

    found = next((s for s in sinks if isinstance(s, MetricsSink)), None)
    if found is not None:
        return found
    try:
        return MetricsSink()
    except DependencyError as exc:
        log.info("the live page has no /metrics: %s", exc.message)
        return None
