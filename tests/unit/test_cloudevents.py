"""Decision notices as CloudEvents 1.0: attributes, round trip, validation, the HTTP path,
and the CloudEvents Python SDK as an independent oracle for our bytes and headers."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from alerts.cloudevents import (
    CLOUDEVENTS_CONTENT_TYPE,
    cloudevent_renderer,
    content_type_for,
    event_type,
    is_cloudevent_media_type,
    parse_cloudevent,
    to_cloudevent,
    validate_cloudevent,
)
from alerts.delivery import webhook_sender
from alerts.errors import CloudEventError, DeliveryError
from alerts.outbox import Job, Target
from alerts.payloads import DecisionNotice
from alerts.receiver import WebhookReceiver
from alerts.signing import SIGNATURE_HEADER, verify
from alerts.webhook import IDEMPOTENCY_HEADER, post_signed

SECRET = b"whsec_cloudevents"
SOURCE = "/rampmon/rampmon-test"
T0 = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z
DECISIONS = ["rollback", "pause", "advance", "resolved", "ship", "iterate"]
ABSENT: Any = object()  # marks an attribute a test case removes


def make_notice(decision: str = "rollback", upper: float = math.inf) -> DecisionNotice:
    return DecisionNotice(
        experiment="checkout.v2",
        stage=5,
        decision=decision,
        guardrail="error_rate",
        metric="errors",
        variant="treatment",
        effect=0.031,
        lower=0.012,
        upper=upper,
        margin=0.01,
        decided_at=T0,
        reason="error_rate harm 0.031 > margin 0.01 (lower bound 0.012)",
    )


def sdk() -> ModuleType:
    """The CloudEvents SDK's HTTP binding (``cloudevents`` >= 2), or skip / fail in CI."""
    try:
        from cloudevents.core.bindings import http
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("the cloudevents SDK (test extra) is not installed")
        pytest.skip("the cloudevents SDK is not installed")
    return http


# -- the envelope ---------------------------------------------------------------------------


@pytest.mark.parametrize("decision", DECISIONS)
def test_required_and_optional_attributes(decision: str) -> None:
    notice = make_notice(decision)
    event = orjson.loads(to_cloudevent(notice, source=SOURCE))
    data = event.pop("data")
    assert event == {
        "specversion": "1.0",
        "id": notice.idempotency_key,
        "source": SOURCE,
        "type": f"io.rampmon.decision.{decision}",
        "subject": "checkout.v2",
        "time": "2023-11-14T22:13:20.250Z",
        "datacontenttype": "application/json",
    }
    assert event["type"] == event_type(decision)
    # data is the plain body's object, field for field (non-finite numbers as null)
    assert data == orjson.loads(notice.to_json())
    assert data["decision"] == decision
    assert data["upper"] is None


def test_round_trip_and_identical_bytes_for_every_retry() -> None:
    for notice in (make_notice(), make_notice("advance", upper=0.05)):
        body = to_cloudevent(notice, source=SOURCE)
        assert body == to_cloudevent(notice, source=SOURCE)
        envelope = parse_cloudevent(body)
        assert envelope == orjson.loads(body)
        assert DecisionNotice.from_json(orjson.dumps(envelope["data"])) == notice
        assert list(envelope) == sorted(envelope)


def test_id_is_the_idempotency_key_so_source_and_id_deduplicate() -> None:
    a, b = make_notice(), make_notice()
    assert orjson.loads(to_cloudevent(a, source=SOURCE))["id"] == a.idempotency_key
    assert to_cloudevent(a, source=SOURCE) == to_cloudevent(b, source=SOURCE)
    advance = orjson.loads(to_cloudevent(make_notice("advance"), source=SOURCE))
    assert advance["id"] != a.idempotency_key


@pytest.mark.parametrize(
    "source", ["/rampmon/app-1", "urn:rampmon:prod", "https://rampmon.example.com/a?x=1#w"]
)
def test_source_accepts_uri_references(source: str) -> None:
    assert parse_cloudevent(to_cloudevent(make_notice(), source=source))["source"] == source


@pytest.mark.parametrize("source", ["", "has space", "/tab\tbad", "/ünïcode", "/a#b#c", "<x>"])
def test_source_must_be_a_non_empty_uri_reference(source: str) -> None:
    with pytest.raises(CloudEventError, match="source"):
        to_cloudevent(make_notice(), source=source)
    with pytest.raises(CloudEventError, match="source"):
        cloudevent_renderer(source)


def test_renderer_plugs_into_claim_decision() -> None:
    render = cloudevent_renderer(SOURCE)
    target = Target("webhook", "pager", "https://flags.example.com/hook")
    assert render(make_notice(), target) == to_cloudevent(make_notice(), source=SOURCE)


def _valid() -> dict[str, Any]:
    return orjson.loads(to_cloudevent(make_notice(), source=SOURCE))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"id": ABSENT}, "'id' is missing"),
        ({"source": ABSENT}, "'source' is missing"),
        ({"type": ABSENT}, "'type' is missing"),
        ({"specversion": ABSENT}, "'specversion' is missing"),
        ({"id": ""}, "non-empty"),
        ({"type": 7}, "non-empty string"),
        ({"specversion": "0.3"}, "specversion"),
        ({"subject": ""}, "non-empty"),
        ({"subject": "line\nbreak"}, "control character"),
        ({"region": "eu\x001"}, "control character"),
        ({"time": "2023-11-14 22:13:20Z"}, "RFC 3339"),
        ({"time": "2023-11-14T22:13:20"}, "RFC 3339"),  # no offset: not a timestamp
        ({"time": "2023-13-14T22:13:20Z"}, "RFC 3339"),
        ({"datacontenttype": "json"}, "media type"),
        ({"dataschema": "/relative/schema.json"}, "absolute URI"),
        ({"Experiment": "x"}, "lower-case"),
        ({"rampmon-stage": "5"}, "lower-case"),
        ({"rampmonstage": 5.0}, "32-bit integer"),
        ({"rampmonstage": 2**31}, "32-bit integer"),
        ({"rampmonstage": {"a": 1}}, "string, a boolean"),
        ({"data_base64": "AA=="}, "mutually exclusive"),
    ],
)
def test_invalid_envelopes_are_rejected(change: dict[str, Any], problem: str) -> None:
    envelope = {k: v for k, v in {**_valid(), **change}.items() if v is not ABSENT}
    with pytest.raises(CloudEventError, match=problem):
        validate_cloudevent(envelope)
    with pytest.raises(CloudEventError, match=problem):
        parse_cloudevent(orjson.dumps(envelope))


def test_valid_extensions_and_null_attributes() -> None:
    envelope = {**_valid(), "rampmonstage": 5, "traced": True, "region": "eu1", "subject": None}
    parsed = parse_cloudevent(orjson.dumps(envelope))
    # json-format.md §2.2: a null attribute is unset; a null required attribute is missing
    assert "subject" not in parsed
    assert parsed["rampmonstage"] == 5
    with pytest.raises(CloudEventError, match="'id' is missing"):
        parse_cloudevent(orjson.dumps({**_valid(), "id": None}))


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'"a string"', b"\xff"])
def test_non_objects_are_rejected(body: bytes) -> None:
    with pytest.raises(CloudEventError):
        parse_cloudevent(body)


def test_content_type_is_chosen_per_body() -> None:
    assert content_type_for(to_cloudevent(make_notice(), source=SOURCE)) == CLOUDEVENTS_CONTENT_TYPE
    assert content_type_for(make_notice().to_json()) == "application/json"
    assert content_type_for(b"\xff not json") == "application/json"
    assert is_cloudevent_media_type(CLOUDEVENTS_CONTENT_TYPE)
    assert is_cloudevent_media_type("Application/CloudEvents+JSON")
    assert not is_cloudevent_media_type("application/json")
    assert not is_cloudevent_media_type("application/cloudevents-batch+json")


# -- over HTTP ------------------------------------------------------------------------------


class Capture:
    """A real aiohttp server that records each request's headers and body."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=204)


@contextlib.asynccontextmanager
async def serve(capture: Capture) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", capture.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


def _job(body: bytes, url: str) -> Job:
    return Job(
        id="k:pager",
        target=Target("webhook", "pager", url),
        body=body,
        idempotency_key=make_notice().idempotency_key,
        attempt=0,
        created_at=T0,
    )


def send_both_formats() -> list[tuple[dict[str, str], bytes]]:
    """POST a CloudEvent and a plain notice through the webhook sender; return what arrived."""
    capture = Capture()

    async def scenario() -> None:
        async with serve(capture) as url, aiohttp.ClientSession() as session:
            send = webhook_sender(session, SECRET, 5.0, content_type=content_type_for)
            await send(_job(to_cloudevent(make_notice(), source=SOURCE), url))
            await send(_job(make_notice().to_json(), url))

    asyncio.run(scenario())
    return capture.requests


def test_webhook_sender_labels_each_body_with_its_content_type() -> None:
    (ce_headers, ce_body), (plain_headers, plain_body) = send_both_formats()
    assert ce_headers["Content-Type"] == CLOUDEVENTS_CONTENT_TYPE
    assert plain_headers["Content-Type"] == "application/json"
    for headers, body in ((ce_headers, ce_body), (plain_headers, plain_body)):
        verify(SECRET, body, headers[SIGNATURE_HEADER])
        assert headers[IDEMPOTENCY_HEADER] == make_notice().idempotency_key
    assert ce_body == to_cloudevent(make_notice(), source=SOURCE)


def test_reference_receiver_takes_both_formats() -> None:
    receiver = WebhookReceiver(SECRET)
    notices = [make_notice("rollback"), make_notice("pause")]

    async def scenario() -> list[int]:
        await receiver.start()
        statuses = []
        try:
            async with aiohttp.ClientSession() as session:
                statuses.append(
                    await post_signed(
                        session,
                        receiver.url,
                        to_cloudevent(notices[0], source=SOURCE),
                        secret=SECRET,
                        idempotency_key=notices[0].idempotency_key,
                        timeout=5.0,
                        content_type=CLOUDEVENTS_CONTENT_TYPE,
                    )
                )
                statuses.append(
                    await post_signed(
                        session,
                        receiver.url,
                        notices[1].to_json(),
                        secret=SECRET,
                        idempotency_key=notices[1].idempotency_key,
                        timeout=5.0,
                    )
                )
                # signed, but a broken event: refused (400), never stored
                broken = orjson.dumps({**_valid(), "specversion": "0.3"})
                with pytest.raises(DeliveryError, match="400") as refused:
                    await post_signed(
                        session,
                        receiver.url,
                        broken,
                        secret=SECRET,
                        idempotency_key="broken",
                        timeout=5.0,
                        content_type=CLOUDEVENTS_CONTENT_TYPE,
                    )
                assert refused.value.status == 400
        finally:
            await receiver.stop()
        return statuses

    assert asyncio.run(scenario()) == [200, 200]
    ce, plain = receiver.accepted
    assert ce.payload == orjson.loads(notices[0].to_json())
    assert ce.payload["decision"] == "rollback"
    assert ce.event is not None and ce.event["type"] == "io.rampmon.decision.rollback"
    assert ce.event["data"] is ce.payload
    assert plain.payload["decision"] == "pause"
    assert plain.event is None
    assert (receiver.requests, receiver.rejected) == (3, 1)


# -- the SDK as an oracle -------------------------------------------------------------------


def test_sdk_parses_our_request_as_a_structured_cloudevent() -> None:
    http = sdk()
    (headers, body), _ = send_both_formats()
    # the very headers the sender put on the wire: none starts with ce-, so structured mode
    event = http.from_http_event(http.HTTPMessage(headers=headers, body=body))
    notice = make_notice()
    assert event.get_specversion() == "1.0"
    assert event.get_id() == notice.idempotency_key
    assert event.get_source() == SOURCE
    assert event.get_type() == "io.rampmon.decision.rollback"
    assert event.get_subject() == "checkout.v2"
    assert event.get_time() == datetime(2023, 11, 14, 22, 13, 20, 250_000, tzinfo=UTC)
    assert event.get_datacontenttype() == "application/json"
    assert event.get_data() == orjson.loads(notice.to_json())
    assert event.get_extension("rampmonstage") is None


@pytest.mark.parametrize("decision", DECISIONS)
def test_sdk_legacy_api_agrees(decision: str) -> None:
    sdk()
    from cloudevents.v1.http import from_http

    body = to_cloudevent(make_notice(decision), source=SOURCE)
    event = from_http({"Content-Type": CLOUDEVENTS_CONTENT_TYPE}, body)
    assert event["id"] == make_notice(decision).idempotency_key
    assert event["type"] == f"io.rampmon.decision.{decision}"
    assert event.get_data() == orjson.loads(body)["data"]


@pytest.mark.parametrize(
    "change",
    [
        {"id": ""},
        {"source": ""},
        {"type": ""},
        {"subject": ""},
        {"Upper": "x"},
        {"with-dash": "x"},
    ],
)
def test_sdk_rejects_what_we_reject(change: dict[str, Any]) -> None:
    http = sdk()
    from cloudevents.core.exceptions import BaseCloudEventException

    body = orjson.dumps({**_valid(), **change})
    with pytest.raises(CloudEventError):
        parse_cloudevent(body)
    message = http.HTTPMessage(headers={"Content-Type": CLOUDEVENTS_CONTENT_TYPE}, body=body)
    with pytest.raises(BaseCloudEventException):
        http.from_http_event(message)


def test_regression_a_replayed_request_with_another_idempotency_key_is_a_duplicate() -> None:
    """Review (decide path): the signature covers ``t`` and the body, not the
    ``Idempotency-Key`` header, yet receivers are told to deduplicate on that header
    (alerts.signing, README "Webhooks") and the reference receiver does. A request captured
    on the wire and replayed within the tolerance with a fresh header value passed the
    signature check and was accepted as a second decision."""
    import time

    from alerts.signing import sign

    receiver = WebhookReceiver(SECRET)
    notice = make_notice("rollback")
    body = to_cloudevent(notice, source=SOURCE)
    signature = sign(SECRET, body, int(time.time()))

    async def scenario() -> list[int]:
        await receiver.start()
        statuses = []
        try:
            async with aiohttp.ClientSession() as session:
                for key in (notice.idempotency_key, "replayed-with-another-key"):
                    headers = {
                        "Content-Type": CLOUDEVENTS_CONTENT_TYPE,
                        SIGNATURE_HEADER: signature,
                        IDEMPOTENCY_HEADER: key,
                    }
                    async with session.post(receiver.url, data=body, headers=headers) as r:
                        statuses.append(r.status)
        finally:
            await receiver.stop()
        return statuses

    asyncio.run(scenario())
    assert len(receiver.accepted) == 1, receiver.unique_keys
