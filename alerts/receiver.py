"""A reference webhook receiver: verifies signatures and records what it accepted.

Used by ``rampmon demo`` and the integration tests as the far end of a rollback webhook.
It deduplicates on ``Idempotency-Key`` as the docs ask real receivers to do, but keeps a
count of every request so tests can see retries and duplicates.

It takes both body formats rampmon sends: the plain JSON notice (``application/json``) and
the notice as a structured CloudEvent (``application/cloudevents+json``, see
:mod:`alerts.cloudevents`), told apart by ``Content-Type`` as the CloudEvents HTTP binding
says. The signature is checked on the raw body first, whatever its format.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from alerts.cloudevents import is_cloudevent_media_type, parse_cloudevent
from alerts.errors import CloudEventError, SignatureError
from alerts.signing import SIGNATURE_HEADER, verify
from alerts.webhook import IDEMPOTENCY_HEADER

__all__ = ["Delivery", "WebhookReceiver"]


@dataclass(frozen=True)
class Delivery:
    """One accepted webhook. ``payload`` is the decision notice's fields -- for a CloudEvent
    its ``data`` -- so callers read ``payload["decision"]`` whatever the format; ``event`` is
    the whole CloudEvents envelope, or None for a plain JSON body; ``received_at`` the
    wall-clock time (``time.time()``) the request was accepted."""

    payload: dict[str, Any]
    body: bytes
    signature: str
    idempotency_key: str
    event: dict[str, Any] | None = None
    received_at: float = 0.0


@dataclass
class WebhookReceiver:
    secret: bytes
    host: str = "127.0.0.1"
    port: int = 0
    #: HTTP status to answer with (tests set 503 to simulate an outage)
    status: int = 200
    accepted: list[Delivery] = field(default_factory=list)
    rejected: int = 0
    #: signed requests answered with ``status`` while it was not a success
    refused: int = 0
    requests: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/rollback"

    @property
    def unique_keys(self) -> set[str]:
        return {d.idempotency_key for d in self.accepted}

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        header = request.headers.get(SIGNATURE_HEADER, "")
        try:
            verify(self.secret, body, header)
        except SignatureError as exc:
            self.rejected += 1
            return web.Response(status=401, text=str(exc))
        if self.status >= 300:
            self.refused += 1
            return web.Response(status=self.status)
        try:
            payload, event = _decode(body, request.headers.get("Content-Type", ""))
        except ValueError as exc:  # CloudEventError included
            # signed but unreadable: a bug on the sending side, and retrying will not fix it
            self.rejected += 1
            return web.Response(status=400, text=str(exc))
        # the key the signature covers: the body's, not the header's, which a replay of a
        # captured request within the tolerance may change to pass for a new delivery
        signed = payload.get("idempotency_key") or (event or {}).get("id")
        key = request.headers.get(IDEMPOTENCY_HEADER, "")
        if signed is not None:
            if key and key != signed:
                self.rejected += 1
                return web.Response(status=400, text="Idempotency-Key does not match the body")
            key = str(signed)
        if key not in self.unique_keys:
            self.accepted.append(Delivery(payload, body, header, key, event, time.time()))
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/rollback", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            server: Any = site._server  # aiohttp keeps the bound socket here
            self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _decode(body: bytes, content_type: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(notice fields, CloudEvents envelope or None); ValueError if unreadable."""
    if is_cloudevent_media_type(content_type):
        event = parse_cloudevent(body)
        data = event.get("data")
        if not isinstance(data, dict):
            raise CloudEventError("the event's data must be a JSON object (the decision)")
        return data, event
    payload = orjson.loads(body)  # orjson.JSONDecodeError is a ValueError
    if not isinstance(payload, dict):
        raise ValueError("body must be a JSON object (the decision)")
    return payload, None
