"""One signed webhook POST: a single attempt; retries belong to :mod:`alerts.delivery`."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import aiohttp

from alerts.errors import DeliveryError
from alerts.signing import SIGNATURE_HEADER, sign

__all__ = ["IDEMPOTENCY_HEADER", "JSON_CONTENT_TYPE", "origin", "post_signed"]

IDEMPOTENCY_HEADER = "Idempotency-Key"
JSON_CONTENT_TYPE = "application/json"


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: the only part of it safe to print.

    Webhook URLs often carry their credential in the path or query (Slack, Teams) or in a
    ``user:password@`` prefix; errors end up in dead letters, logs and ``rampmon webhooks
    list``, so they name only the origin. The port stays: it tells two services on one host
    apart and is no secret.
    """
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # a malformed port is not worth a crash while reporting an error
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


async def post_signed(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    secret: bytes,
    idempotency_key: str,
    timeout: float,
    now: float | None = None,
    content_type: str = JSON_CONTENT_TYPE,
) -> int:
    """POST ``body`` signed at ``now``; return the 2xx status or raise :class:`DeliveryError`.

    ``content_type`` names the body's format: plain JSON by default, or
    :data:`alerts.cloudevents.CLOUDEVENTS_CONTENT_TYPE` for a CloudEvent in structured mode
    (the CloudEvents HTTP binding tells the two modes apart by this header alone). The
    signature covers the body only, so it does not depend on the content type.

    Redirects are not followed: a redirected POST may silently become a GET elsewhere.
    """
    timestamp = int(time.time() if now is None else now)
    headers = {
        "Content-Type": content_type,
        SIGNATURE_HEADER: sign(secret, body, timestamp),
        IDEMPOTENCY_HEADER: idempotency_key,
        "User-Agent": "rampmon-webhook/1",
    }
    try:
        async with session.post(
            url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as response:
            status = response.status
            reason = response.reason or ""
            await response.read()  # drain so the connection can be reused
    except (TimeoutError, aiohttp.ClientError) as exc:
        # the class and OS reason only: some aiohttp messages embed the full URL
        detail = type(exc).__name__
        if isinstance(exc, OSError) and exc.strerror:
            detail += f": {exc.strerror}"
        raise DeliveryError(f"POST {origin(url)} failed: {detail}") from exc
    if not 200 <= status < 300:
        message = f"POST {origin(url)} answered {status} {reason}".rstrip()
        raise DeliveryError(message, status=status)
    return status
