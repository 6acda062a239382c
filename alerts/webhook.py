"""One signed webhook POST: a single attempt; retries belong to :mod:`alerts.delivery`."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import aiohttp

from alerts.errors import DeliveryError
from alerts.signing import SIGNATURE_HEADER, sign

__all__ = ["IDEMPOTENCY_HEADER", "post_signed"]

IDEMPOTENCY_HEADER = "Idempotency-Key"


def _where(url: str) -> str:
    # webhook URLs often carry their credential in the path (Slack, Teams): errors end up in
    # dead letters and logs, so name only scheme and host
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}"


async def post_signed(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    secret: bytes,
    idempotency_key: str,
    timeout: float,
    now: float | None = None,
) -> int:
    """POST ``body`` signed at ``now``; return the 2xx status or raise :class:`DeliveryError`.

    Redirects are not followed: a redirected POST may silently become a GET elsewhere.
    """
    timestamp = int(time.time() if now is None else now)
    headers = {
        "Content-Type": "application/json",
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
        raise DeliveryError(f"POST {_where(url)} failed: {detail}") from exc
    if not 200 <= status < 300:
        message = f"POST {_where(url)} answered {status} {reason}".rstrip()
        raise DeliveryError(message, status=status)
    return status
