"""AlertTracker (pure): what goes to Alertmanager at each evaluation, and the alert bodies."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from alerts.alertmanager import (
    GUARDRAIL_ALERTNAME,
    SRM_ALERTNAME,
    Alert,
    AlertTracker,
    Firing,
    guardrail_alert,
    label_key,
    srm_alert,
)

T0 = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z


def breach(**overrides: Any) -> Firing:
    """A breached guardrail as the worker would build it; keyword overrides for variants."""
    kwargs: dict[str, Any] = dict(
        experiment="checkout.v2", stage=5, guardrail="errors", variant="treatment",
        metric="error_session", effect=0.03, lower=0.012, upper=math.inf, margin=0.005,
        runbook_url="https://runbooks.example.com/rampmon#guardrail",
    )  # fmt: skip
    return guardrail_alert(**{**kwargs, **overrides})


def test_new_alert_is_sent_at_once_with_endsat_four_resends_ahead() -> None:
    tracker = AlertTracker(resend_seconds=60)
    (alert,) = tracker.update([breach()], T0)
    assert (alert.starts_at, alert.ends_at) == (T0, T0 + 240)
    assert not alert.resolved_at(T0 + 239)
    assert alert.labels == breach().labels
    assert tracker.firing == [breach().key]


def test_still_firing_is_resent_every_resend_seconds_with_a_stable_start() -> None:
    tracker = AlertTracker(resend_seconds=60)
    sent: list[tuple[float, Alert]] = []
    for second in range(0, 181):
        now = T0 + second
        sent += [(now, a) for a in tracker.update([breach(effect=0.03 + second / 1e4)], now)]
    assert [now - T0 for now, _ in sent] == [0, 60, 120, 180]
    assert {a.starts_at for _, a in sent} == {T0}
    assert [a.ends_at for now, a in sent] == [now + 240 for now, _ in sent]
    # annotations follow the latest evaluation; the labels (the identity) never change
    assert sent[-1][1].annotations["effect"].startswith("+0.048")
    assert {label_key(a.labels) for _, a in sent} == {breach().key}


def test_resolved_is_sent_once_with_endsat_now_then_nothing() -> None:
    tracker = AlertTracker(resend_seconds=60)
    tracker.update([breach()], T0)
    tracker.update([breach()], T0 + 1)
    (resolved,) = tracker.update([], T0 + 2.5)
    assert (resolved.starts_at, resolved.ends_at) == (T0, T0 + 2.5)
    assert resolved.resolved_at(T0 + 2.5)
    assert resolved.annotations == breach().annotations
    for second in range(3, 300):
        assert tracker.update([], T0 + second) == []
    assert tracker.firing == []


def test_firing_again_after_resolving_gets_a_new_start() -> None:
    tracker = AlertTracker(resend_seconds=60)
    tracker.update([breach()], T0)
    tracker.update([], T0 + 10)
    (again,) = tracker.update([breach()], T0 + 11)
    assert (again.starts_at, again.ends_at) == (T0 + 11, T0 + 11 + 240)


def test_identity_is_the_label_set() -> None:
    tracker = AlertTracker(resend_seconds=60)
    a, b = breach(guardrail="errors"), breach(guardrail="latency")
    assert len(tracker.update([a, b], T0)) == 2
    # same labels, other annotations: the same alert, not new (no extra send)
    assert tracker.update([breach(guardrail="errors", effect=0.5), b], T0 + 1) == []
    # given twice in one evaluation: counted once
    (resolved_b,) = tracker.update([a, a], T0 + 2)
    assert resolved_b.labels["guardrail"] == "latency" and resolved_b.ends_at == T0 + 2
    assert tracker.update([a], T0 + 60) == [
        Alert(a.labels, a.annotations, starts_at=T0, ends_at=T0 + 300)
    ]


def test_output_is_sorted_by_labels_and_mixes_new_resent_and_resolved() -> None:
    tracker = AlertTracker(resend_seconds=10)
    tracker.update([breach(guardrail="b"), breach(guardrail="c")], T0)
    out = tracker.update([breach(guardrail="c"), breach(guardrail="a")], T0 + 10)
    assert [(x.labels["guardrail"], x.starts_at, x.ends_at) for x in out] == [
        ("a", T0 + 10, T0 + 50),  # new
        ("b", T0, T0 + 10),  # resolved
        ("c", T0, T0 + 50),  # resent
    ]


def test_resolve_all_for_one_experiment() -> None:
    tracker = AlertTracker(resend_seconds=60)
    mine, other = breach(experiment="checkout.v2"), breach(experiment="search.v3")
    tracker.update([mine, other], T0)
    resolved = tracker.resolve_all(T0 + 5, where=lambda labels: labels["experiment"] == "search.v3")
    assert [(r.key, r.starts_at, r.ends_at) for r in resolved] == [(other.key, T0, T0 + 5)]
    assert tracker.firing == [mine.key]
    # the resolved one is forgotten: no second resolution; if it fires here again it is new
    assert tracker.update([mine], T0 + 6) == []
    (back,) = tracker.update([mine, other], T0 + 7)
    assert (back.key, back.starts_at) == (other.key, T0 + 7)
    assert {r.key for r in tracker.resolve_all(T0 + 8)} == {mine.key, other.key}
    assert tracker.firing == []


def test_requeue_resends_a_failed_batch_at_the_next_update() -> None:
    tracker = AlertTracker(resend_seconds=60)
    failed = tracker.update([breach(guardrail="a"), breach(guardrail="b")], T0)
    tracker.requeue(failed, T0)
    again = tracker.update([breach(guardrail="a"), breach(guardrail="b")], T0 + 1)
    assert [(x.labels["guardrail"], x.starts_at, x.ends_at) for x in again] == [
        ("a", T0, T0 + 241),
        ("b", T0, T0 + 241),
    ]
    # a lost resolution is sent again, once
    lost = tracker.update([breach(guardrail="a")], T0 + 2)
    assert [x.labels["guardrail"] for x in lost] == ["b"]
    tracker.requeue(lost, T0 + 2)
    (resent,) = tracker.update([breach(guardrail="a")], T0 + 3)
    assert (resent.labels["guardrail"], resent.ends_at) == ("b", T0 + 2)
    assert tracker.update([breach(guardrail="a")], T0 + 4) == []
    # ...unless it fired again meanwhile: the firing alert wins
    lost = tracker.update([], T0 + 5)
    tracker.requeue(lost, T0 + 5)
    (refired,) = tracker.update([breach(guardrail="a")], T0 + 6)
    assert (refired.starts_at, refired.ends_at) == (T0 + 6, T0 + 246)


def test_tracker_rejects_a_validity_that_would_flap() -> None:
    with pytest.raises(ValueError):
        AlertTracker(resend_seconds=60, valid_seconds=60)
    with pytest.raises(ValueError):
        AlertTracker(resend_seconds=0)


def test_postable_alert_json() -> None:
    alert = Alert(
        labels={"alertname": "X", "experiment": "e"},
        annotations={"summary": "s"},
        starts_at=T0,
        ends_at=T0 + 240,
        generator_url="http://rampmon.example.com:6066/metrics",
    )
    assert orjson.loads(alert.to_json()) == {
        "labels": {"alertname": "X", "experiment": "e"},
        "annotations": {"summary": "s"},
        "startsAt": "2023-11-14T22:13:20.250Z",
        "endsAt": "2023-11-14T22:17:20.250Z",
        "generatorURL": "http://rampmon.example.com:6066/metrics",
    }
    bare = Alert(labels={"alertname": "X"}, annotations={}, starts_at=T0).to_dict()
    assert set(bare) == {"labels", "annotations", "startsAt"}


@pytest.mark.parametrize(
    ("labels", "annotations"),
    [
        ({}, {}),
        ({"alertname": ""}, {}),
        ({"bad-name": "x"}, {}),
        ({"1st": "x"}, {}),
        ({"alertname": "X"}, {"runbook-url": "x"}),
        ({"alertname": 1}, {}),
    ],
)
def test_invalid_labels_and_annotations_are_rejected(labels: Any, annotations: Any) -> None:
    with pytest.raises(ValueError):
        Firing(labels, annotations)
    with pytest.raises(ValueError):
        Alert(labels, annotations, starts_at=T0)


def test_alert_times_are_checked_like_alertmanager_does() -> None:
    with pytest.raises(ValueError, match="before"):
        Alert({"alertname": "X"}, {}, starts_at=T0, ends_at=T0 - 1)
    with pytest.raises(ValueError, match="finite"):
        Alert({"alertname": "X"}, {}, starts_at=math.nan)


def test_alerts_are_immutable_copies() -> None:
    labels = {"alertname": "X"}
    firing = Firing(labels)
    labels["alertname"] = "changed"
    assert firing.labels["alertname"] == "X"
    with pytest.raises(TypeError):
        firing.labels["alertname"] = "Y"  # type: ignore[index]


def test_guardrail_alert_contents() -> None:
    firing = breach()
    assert dict(firing.labels) == {
        "alertname": GUARDRAIL_ALERTNAME,
        "experiment": "checkout.v2",
        "stage": "5",
        "guardrail": "errors",
        "variant": "treatment",
        "severity": "critical",
        "source": "rampmon",
    }
    assert dict(firing.annotations) == {
        "summary": "checkout.v2: guardrail errors (error_session) breached for treatment "
        "at stage 5%",
        "effect": "+0.03 (tolerated regression +0.005)",
        "interval": "[+0.012, +inf] (anytime-valid)",
        "runbook_url": "https://runbooks.example.com/rampmon#guardrail",
    }
    # stage 5 and 5.0 are one identity, as in the Redis keys
    assert breach(stage=5).key == breach(stage=5.0).key


def test_srm_alert_contents() -> None:
    firing = srm_alert(
        experiment="checkout.v2",
        stage=25,
        observed={"control": 7400, "treatment": 2600},
        expected={"control": 0.75, "treatment": 0.25},
        p_value=1.2e-05,
        alpha=0.001,
    )
    assert dict(firing.labels) == {
        "alertname": SRM_ALERTNAME,
        "experiment": "checkout.v2",
        "stage": "25",
        "severity": "warning",
        "source": "rampmon",
    }
    assert firing.annotations["effect"] == (
        "observed vs expected share: control 7400 (74.0% vs 75.0%), treatment 2600 (26.0% vs 25.0%)"
    )
    assert firing.annotations["interval"] == "always-valid p = 1.2e-05 < alpha 0.001"
    assert "runbook_url" not in firing.annotations
    assert firing.annotations["summary"].startswith("checkout.v2: sample ratio mismatch")
