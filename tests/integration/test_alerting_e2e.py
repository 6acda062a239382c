"""On-call end to end: a real Prometheus scrapes a live worker fed with an injected
regression, the shipped rules fire through a real Alertmanager (with the shipped routing)
to a receiver, and rampmon's own Alertmanager push appears and resolves."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web

from streams.workerproc import sample
from tests.integration.checks import stage_at
from tests.integration.servers import Alertmanager, Prometheus
from tests.integration.stack import EXPERIMENT, Stack, wait_for

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


class OncallReceiver:
    """Alertmanager's webhook receiver: keeps every notification, on its own loop thread."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.notifications.append(await request.json())
        return web.Response(status=200)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/alertmanager", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/alertmanager"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        return [
            a
            for n in self.notifications
            for a in n["alerts"]
            if all(a["labels"].get(k) == v for k, v in labels.items())
        ]


def _alertmanager_config(receiver_url: str) -> str:
    """The shipped config, pointed at the test receiver and with test-sized timers."""
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = receiver_url
    config["route"].update(group_wait="1s", group_interval="1s")
    return yaml.safe_dump(config)


def _prometheus_config(worker_port: int, alertmanager_port: int) -> str:
    """The shipped rules, this worker as the only target, 1 s scrapes and evaluations."""
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    rules = [str((DEPLOY / "prometheus" / r).resolve()) for r in shipped["rule_files"]]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": rules,
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
        },
        "scrape_configs": [
            {"job_name": "rampmon", "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]}
        ],
    }
    return yaml.safe_dump(config)


class AlertWatcher:
    """Polls Alertmanager's v2 API every 0.1 s and remembers every rampmon-pushed alert seen,
    so a short-lived alert (a rollback ends the regression within seconds) is not missed."""

    def __init__(self, url: str) -> None:
        query = urllib.parse.urlencode({"filter": 'source="rampmon"'})
        self._url = f"{url}/api/v2/alerts?{query}"
        self.seen: list[dict[str, Any]] = []
        self.current: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self._url, timeout=2) as response:
                    self.current = orjson.loads(response.read())
                self.seen += self.current
            except OSError:
                pass
            self._stop.wait(0.1)

    def __enter__(self) -> AlertWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _prometheus_alerts(prom: Prometheus) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{prom.url}/api/v1/alerts", timeout=2) as response:
        return list(orjson.loads(response.read())["data"]["alerts"])


def test_regression_pages_on_call_and_rampmon_alert_resolves(stack: Stack, tmp_path: Path) -> None:
    receiver = OncallReceiver()
    receiver.start()
    try:
        with Alertmanager(tmp_path, config=_alertmanager_config(receiver.url)) as am:
            stack.env["RAMPMON_ALERTMANAGER_URL"] = am.url
            stack.env["RAMPMON_ALERT_RESEND_SECONDS"] = "2"
            # the ramp is at 50% before the worker starts, as in a deployment: a worker that
            # reads the stage only after its first evaluation labels that readout (and its
            # own alert push) with the default first stage for up to a refresh interval
            stage_at(stack, 50, time.time() - 60)
            worker = stack.start_worker()
            prom_config = _prometheus_config(worker.web_port, am.port)
            with Prometheus(tmp_path, config=prom_config) as prom, AlertWatcher(am.url) as watch:
                stack.run_regression({"error_session": 0.03})
                # Prometheus: the shipped rule sees the worker's rollback decision and pages
                # on-call through Alertmanager's shipped routing (critical -> oncall)
                wait_for(
                    lambda: bool(receiver.alerts(alertname="RampmonRollbackDecision")),
                    60,
                    "the RampmonRollbackDecision notification",
                )
                page = receiver.alerts(alertname="RampmonRollbackDecision")[0]
                assert page["status"] == "firing"
                assert page["labels"]["experiment"] == EXPERIMENT
                assert page["labels"]["severity"] == "critical"
                assert page["labels"]["source"] == "prometheus"
                assert page["annotations"]["runbook_url"].endswith("#rampmonrollbackdecision")
                # grouped by experiment: every notification of this experiment is one group
                groups = {
                    n["groupKey"]
                    for n in receiver.notifications
                    if n["commonLabels"].get("experiment") == EXPERIMENT
                }
                assert len(groups) == 1
                firing_rules = {a["labels"]["alertname"] for a in _prometheus_alerts(prom)}
                assert "RampmonRollbackDecision" in firing_rules

                # rampmon's own push was in Alertmanager while the breach was in force ...
                wait_for(lambda: bool(watch.seen), 10, "rampmon's own alert in Alertmanager")
                own = watch.seen[0]
                assert own["labels"] == {
                    "alertname": "RampmonGuardrailBreach",
                    "experiment": EXPERIMENT,
                    "stage": "50",
                    "guardrail": "error_session",
                    "variant": "treatment",
                    "severity": "critical",
                    "source": "rampmon",
                }
                for annotation in ("summary", "effect", "interval", "runbook_url"):
                    assert own["annotations"][annotation]
                # ... and resolves now that the rollback has stopped the regression (the ramp
                # is at 0: no user gets the treatment), while the decision stays paged
                wait_for(lambda: not watch.current, 30, "rampmon's alert to resolve")
                assert wait_stage_zero(stack)
                assert "RampmonRollbackDecision" in {
                    a["labels"]["alertname"] for a in _prometheus_alerts(prom)
                }
                pushes = sample(worker.metrics(), "rampmon_alertmanager_pushes_total", outcome="ok")
                assert pushes >= 2  # the firing alert and its resolution
    finally:
        receiver.stop()


def wait_stage_zero(stack: Stack) -> bool:
    from redis import Redis

    from alerts import keys

    redis = Redis.from_url(stack.redis.url, decode_responses=True)
    return redis.hget(keys.stage(EXPERIMENT), "percent") == "0.0"
