"""Push guardrail alerts to Prometheus Alertmanager (API v2), the way Prometheus does.

Webhooks tell the flag service to act; Alertmanager tells people, with its routing,
grouping, silences and inhibition. rampmon is the alert *client* here, so it follows
Alertmanager's client contract (``docs/clients.md`` and ``api/v2/openapi.yaml``,
``POST /api/v2/alerts`` with a list of ``postableAlert``):

* an alert is identified by its label set (Alertmanager fingerprints the labels);
* a firing alert is re-sent periodically with ``endsAt`` in the near future. If the sender
  dies, the alert resolves by itself once ``endsAt`` passes -- nobody is paged forever by a
  worker that no longer exists;
* an alert that stops firing is sent once more with ``endsAt`` = now: resolved;
* ``startsAt`` stays the same across re-sends, so the alert keeps one start in notifications.

Prometheus re-sends every ``resend_delay`` (1 min) with ``endsAt = now + 4 × resend``;
:class:`AlertTracker` does the same with ``resend_seconds`` (default 60). It is pure (the
worker passes the clock) and :class:`AlertmanagerClient` does the I/O, sending every batch to
every Alertmanager of an HA cluster, as the clients contract asks: Alertmanagers deduplicate
among themselves, a sender must not pick one.

What the worker builds (:func:`guardrail_alert`, :func:`srm_alert`), per evaluation, for the
alerts firing *now*:

``RampmonGuardrailBreach``, severity ``critical``
    labels ``alertname, experiment, stage, guardrail, variant, severity, source="rampmon"``;
    one per breached guardrail and treatment variant at the stage in force.
``RampmonSampleRatioMismatch``, severity ``warning``
    labels ``alertname, experiment, stage, severity, source="rampmon"``; one per stage whose
    exposure counts fail the SRM test.

Annotations: ``summary`` (one line for a page), ``effect`` (the estimate and the margin, or
for SRM the observed and expected split), ``interval`` (the anytime-valid interval; for SRM
the always-valid p-value against its alpha) and ``runbook_url`` when one is configured.
Annotations may change between sends (the effect moves every second); labels may not, since
they are the identity. ``stage`` is written like the ``stage`` label of rampmon's Prometheus
series (``f"{stage:g}"``: ``"5"``, ``"0.5"``), so rampmon's alert and the Prometheus rule's
alert for the same breach carry the same stage, and 5 and 5.0 are one alert.

The push outcome is counted in plain attributes (``pushed``, ``failed``); this package never
imports a metrics client.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from alerts.errors import AlertmanagerError
from alerts.webhook import origin

__all__ = [
    "ALERTS_PATH",
    "GUARDRAIL_ALERTNAME",
    "SRM_ALERTNAME",
    "Alert",
    "AlertTracker",
    "AlertmanagerClient",
    "Firing",
    "LabelKey",
    "guardrail_alert",
    "label_key",
    "srm_alert",
    "stage_label",
]

ALERTS_PATH = "/api/v2/alerts"
GUARDRAIL_ALERTNAME = "RampmonGuardrailBreach"
SRM_ALERTNAME = "RampmonSampleRatioMismatch"

# Alertmanager validates label and annotation names against Prometheus' legacy name syntax
# and answers 400 otherwise; checking here turns a bad name into an error at build time
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

#: an alert's identity: its labels, sorted
LabelKey = tuple[tuple[str, str], ...]


def label_key(labels: Mapping[str, str]) -> LabelKey:
    return tuple(sorted(labels.items()))


def _frozen_pairs(pairs: Mapping[str, str], what: str) -> Mapping[str, str]:
    for name, value in pairs.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"{what} name {name!r} must match [a-zA-Z_][a-zA-Z0-9_]*")
        if not isinstance(value, str):
            raise ValueError(f"{what} {name!r} must be a string, got {value!r}")
    return MappingProxyType(dict(pairs))


def _rfc3339(ts: float) -> str:
    moment = datetime.fromtimestamp(ts, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Firing:
    """What the worker sees firing at one evaluation: identity (labels) and content.

    Label values must be non-empty: Alertmanager drops empty labels, so ``{"a": ""}`` would
    silently be another alert's identity.
    """

    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    generator_url: str | None = None

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("an alert needs at least one label")
        if any(value == "" for value in self.labels.values()):
            raise ValueError(f"label values must be non-empty, got {dict(self.labels)}")
        object.__setattr__(self, "labels", _frozen_pairs(self.labels, "label"))
        object.__setattr__(self, "annotations", _frozen_pairs(self.annotations, "annotation"))

    @property
    def key(self) -> LabelKey:
        return label_key(self.labels)


@dataclass(frozen=True, slots=True)
class Alert:
    """One ``postableAlert`` of Alertmanager API v2. ``ends_at`` None lets Alertmanager apply
    its ``resolve_timeout``; :class:`AlertTracker` always sets it."""

    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float
    ends_at: float | None = None
    generator_url: str | None = None

    def __post_init__(self) -> None:
        if not self.labels or any(value == "" for value in self.labels.values()):
            raise ValueError("an alert needs at least one label, all values non-empty")
        object.__setattr__(self, "labels", _frozen_pairs(self.labels, "label"))
        object.__setattr__(self, "annotations", _frozen_pairs(self.annotations, "annotation"))
        if not math.isfinite(self.starts_at):
            raise ValueError(f"starts_at must be finite, got {self.starts_at}")
        if self.ends_at is not None and not self.ends_at >= self.starts_at:
            # Alertmanager answers 400 "start time must be before end time"
            raise ValueError(f"ends_at {self.ends_at} is before starts_at {self.starts_at}")

    @property
    def key(self) -> LabelKey:
        return label_key(self.labels)

    def resolved_at(self, now: float) -> bool:
        """True if Alertmanager considers this alert resolved at ``now``."""
        return self.ends_at is not None and self.ends_at <= now

    def to_dict(self) -> dict[str, Any]:
        """The ``postableAlert`` object: RFC 3339 times (UTC, milliseconds)."""
        body: dict[str, Any] = {
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": _rfc3339(self.starts_at),
        }
        if self.ends_at is not None:
            body["endsAt"] = _rfc3339(self.ends_at)
        if self.generator_url is not None:
            body["generatorURL"] = self.generator_url
        return body

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)


@dataclass(slots=True)
class _Tracked:
    starts_at: float
    last_sent: float
    latest: Firing


class AlertTracker:
    """Which alerts to send at each evaluation: new at once, firing ones every
    ``resend_seconds``, resolved ones once. Pure: no clock, no I/O.

    ``valid_seconds`` (default ``4 * resend_seconds``, as Prometheus) is how far ahead
    ``endsAt`` is set on a firing alert: Alertmanager resolves it by itself if no re-send
    arrives by then. It must exceed ``resend_seconds`` or firing alerts would flap.

    A failed push is not retried here by default: a firing alert goes out again at its next
    re-send, and a resolution that never arrived is covered by ``endsAt``. Callers that want
    a faster repair pass the failed batch to :meth:`requeue`.
    """

    def __init__(self, resend_seconds: float = 60.0, valid_seconds: float | None = None) -> None:
        if not resend_seconds > 0:
            raise ValueError(f"resend_seconds must be positive, got {resend_seconds}")
        valid = 4.0 * resend_seconds if valid_seconds is None else valid_seconds
        if not valid > resend_seconds:
            raise ValueError(f"valid_seconds ({valid}) must exceed resend_seconds")
        self.resend_seconds = float(resend_seconds)
        self.valid_seconds = float(valid)
        self._tracked: dict[LabelKey, _Tracked] = {}
        self._unsent_resolutions: dict[LabelKey, Alert] = {}

    @property
    def firing(self) -> list[LabelKey]:
        """Identities currently firing, sorted."""
        return sorted(self._tracked)

    def update(self, firing: Iterable[Firing], now: float) -> list[Alert]:
        """Record what fires at ``now``; return the alerts to push now, sorted by labels.

        An identity given twice counts once (the last one's annotations win).
        """
        current = {f.key: f for f in firing}
        out: dict[LabelKey, Alert] = {}
        for key, resolution in self._unsent_resolutions.items():
            if key not in current:  # firing again supersedes a lost resolution
                out[key] = resolution
        self._unsent_resolutions.clear()
        for key in [k for k in self._tracked if k not in current]:
            out[key] = self._resolve(key, now)
        for key, spec in current.items():
            state = self._tracked.get(key)
            if state is None:
                state = self._tracked[key] = _Tracked(
                    starts_at=now, last_sent=-math.inf, latest=spec
                )
            state.latest = spec
            if now - state.last_sent >= self.resend_seconds:
                state.last_sent = now
                out[key] = self._alert(state, ends_at=now + self.valid_seconds)
        return [out[key] for key in sorted(out)]

    def resolve_all(
        self, now: float, where: Callable[[Mapping[str, str]], bool] | None = None
    ) -> list[Alert]:
        """Resolve every tracked alert whose labels satisfy ``where`` (all if None).

        For a worker that stops owning an experiment (its partitions moved, or it shuts
        down): the new owner starts its own alerts, and ours must not linger until expiry.
        """
        keys = [k for k, s in self._tracked.items() if where is None or where(s.latest.labels)]
        return [self._resolve(key, now) for key in sorted(keys)]

    def requeue(self, alerts: Iterable[Alert], now: float) -> None:
        """Mark ``alerts`` -- a batch whose push failed -- as unsent, so the next
        :meth:`update` sends them again: firing ones with fresh content, resolutions as they
        were. An alert overtaken since (resolved, or firing again with a new start) is
        dropped: what the tracker knows now is newer."""
        for alert in alerts:
            state = self._tracked.get(alert.key)
            if alert.resolved_at(now):
                if state is None:
                    self._unsent_resolutions[alert.key] = alert
            elif state is not None and state.starts_at == alert.starts_at:
                state.last_sent = -math.inf

    def _resolve(self, key: LabelKey, now: float) -> Alert:
        state = self._tracked.pop(key)
        return self._alert(state, ends_at=max(now, state.starts_at))

    @staticmethod
    def _alert(state: _Tracked, *, ends_at: float) -> Alert:
        return Alert(
            labels=state.latest.labels,
            annotations=state.latest.annotations,
            starts_at=state.starts_at,
            ends_at=ends_at,
            generator_url=state.latest.generator_url,
        )


class AlertmanagerClient:
    """POST alerts to every Alertmanager in ``urls`` (base URLs, route prefix included)."""

    def __init__(self, session: aiohttp.ClientSession, urls: Sequence[str], timeout: float) -> None:
        if not urls:
            raise ValueError("at least one Alertmanager URL is needed")
        for url in urls:
            if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
                raise ValueError(f"Alertmanager URL must be http(s)://host..., got {origin(url)}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._session = session
        self._endpoints = [url.rstrip("/") + ALERTS_PATH for url in urls]
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        #: successful POSTs, one per Alertmanager per push
        self.pushed = 0
        #: failed POSTs, one per Alertmanager per push
        self.failed = 0

    async def push(self, alerts: Sequence[Alert]) -> None:
        """Send ``alerts`` to all Alertmanagers concurrently; nothing to send is a no-op.

        Raises :class:`AlertmanagerError` if any of them failed, after all were tried: a
        retry of the whole batch is harmless (alerts merge by label set), so the caller need
        not know which one succeeded.
        """
        if not alerts:
            return
        body = orjson.dumps([alert.to_dict() for alert in alerts])
        outcomes = await asyncio.gather(*(self._post(url, body) for url in self._endpoints))
        failures = tuple(problem for problem in outcomes if problem is not None)
        self.failed += len(failures)
        self.pushed += len(outcomes) - len(failures)
        if failures:
            raise AlertmanagerError(
                f"{len(failures)} of {len(outcomes)} Alertmanagers failed: " + "; ".join(failures),
                failures=failures,
            )

    async def _post(self, url: str, body: bytes) -> str | None:
        """None on success, else a description naming only the origin of ``url``."""
        try:
            async with self._session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json", "User-Agent": "rampmon-alerts/1"},
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                text = await response.text(errors="replace")
                if 200 <= response.status < 300:
                    return None
                # Alertmanager explains a 400 ("start time must be before end time", ...)
                return f"{origin(url)} answered {response.status}: {text.strip()[:200]}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            # the class and OS reason only: some aiohttp messages embed the full URL
            detail = type(exc).__name__
            if isinstance(exc, OSError) and exc.strerror:
                detail += f": {exc.strerror}"
            return f"{origin(url)} failed: {detail}"


def stage_label(stage: float) -> str:
    """A stage percent as rampmon's metrics label it (``streams.evaluator``): ``"5"``."""
    return f"{float(stage):g}"


def _number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:+.6g}" if math.isfinite(value) else ("+inf" if value > 0 else "-inf")


def guardrail_alert(
    *,
    experiment: str,
    stage: float,
    guardrail: str,
    variant: str,
    metric: str,
    effect: float,
    lower: float,
    upper: float,
    margin: float,
    runbook_url: str | None = None,
    generator_url: str | None = None,
) -> Firing:
    """A firing ``RampmonGuardrailBreach`` from plain values of one breached guardrail."""
    labels = {
        "alertname": GUARDRAIL_ALERTNAME,
        "experiment": experiment,
        "stage": stage_label(stage),
        "guardrail": guardrail,
        "variant": variant,
        "severity": "critical",
        "source": "rampmon",
    }
    annotations = {
        "summary": (
            f"{experiment}: guardrail {guardrail} ({metric}) breached for {variant} "
            f"at stage {stage:g}%"
        ),
        "effect": f"{_number(effect)} (tolerated regression {_number(margin)})",
        "interval": f"[{_number(lower)}, {_number(upper)}] (anytime-valid)",
    }
    if runbook_url:
        annotations["runbook_url"] = runbook_url
    return Firing(labels, annotations, generator_url)


def srm_alert(
    *,
    experiment: str,
    stage: float,
    observed: Mapping[str, int],
    expected: Mapping[str, float],
    p_value: float,
    alpha: float,
    runbook_url: str | None = None,
    generator_url: str | None = None,
) -> Firing:
    """A firing ``RampmonSampleRatioMismatch``: ``observed`` exposures and ``expected``
    allocation (shares summing to 1) per variant at one stage."""
    total = sum(observed.values())
    split = ", ".join(
        f"{variant} {count} ({count / total:.1%} vs {expected.get(variant, math.nan):.1%})"
        if total
        else f"{variant} {count}"
        for variant, count in observed.items()
    )
    labels = {
        "alertname": SRM_ALERTNAME,
        "experiment": experiment,
        "stage": stage_label(stage),
        "severity": "warning",
        "source": "rampmon",
    }
    annotations = {
        "summary": (
            f"{experiment}: sample ratio mismatch at stage {stage:g}%; "
            "its effects are not trustworthy"
        ),
        "effect": f"observed vs expected share: {split}",
        "interval": f"always-valid p = {p_value:.3g} < alpha {alpha:g}",
    }
    if runbook_url:
        annotations["runbook_url"] = runbook_url
    return Firing(labels, annotations, generator_url)
