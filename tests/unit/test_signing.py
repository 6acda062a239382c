"""Webhook signatures: roundtrip, every rejection path, and the documented receiver code."""

from __future__ import annotations

import ast
import math
import re
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from alerts import signing
from alerts.cloudevents import to_cloudevent
from alerts.errors import SignatureError
from alerts.payloads import DecisionNotice
from alerts.signing import sign, verify

SECRET = b"whsec_test_0123456789"
BODY = b'{"decision":"rollback","experiment":"checkout.v2"}'
T0 = 1_700_000_000


def test_roundtrip() -> None:
    header = sign(SECRET, BODY, T0)
    assert header.startswith(f"t={T0},v1=")
    verify(SECRET, BODY, header, now=T0 + 10)


def test_known_vector() -> None:
    # pins the wire format: t=<secs>,v1=hex(HMAC-SHA256(secret, b"<t>." + body))
    import hashlib
    import hmac

    mac = hmac.new(SECRET, f"{T0}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, T0) == f"t={T0},v1={mac}"


def test_tampered_body_fails() -> None:
    header = sign(SECRET, BODY, T0)
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, BODY.replace(b"rollback", b"continue"), header, now=T0)


def test_wrong_secret_fails() -> None:
    header = sign(SECRET, BODY, T0)
    with pytest.raises(SignatureError, match="does not match"):
        verify(b"another-secret", BODY, header, now=T0)


def test_tampered_timestamp_fails() -> None:
    signature = sign(SECRET, BODY, T0).split(",")[1]
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, BODY, f"t={T0 + 1},{signature}", now=T0)


@pytest.mark.parametrize("skew", [301, -301, 86_400])
def test_timestamp_outside_tolerance_fails(skew: int) -> None:
    header = sign(SECRET, BODY, T0)
    with pytest.raises(SignatureError, match="tolerance"):
        verify(SECRET, BODY, header, now=T0 + skew)


def test_timestamp_at_tolerance_edge_passes() -> None:
    verify(SECRET, BODY, sign(SECRET, BODY, T0), now=T0 + 300)
    verify(SECRET, BODY, sign(SECRET, BODY, T0), tolerance_seconds=5, now=T0 - 5)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "t=,v1=00",
        "t=abc,v1=00",
        "t=-5,v1=00",
        "t=１７,v1=00",  # full-width digits: str.isdigit() says yes, int() would accept them
        f"v1={'0' * 64}",
        f"t={T0}",
        f"t={T0},t={T0},v1={'0' * 64}",
        f"t={T0},v1=ünïcode",
    ],
)
def test_malformed_header_fails(header: str) -> None:
    with pytest.raises(SignatureError):
        verify(SECRET, BODY, header, now=T0)


def test_any_of_several_v1_matches_and_unknown_schemes_are_ignored() -> None:
    good = sign(SECRET, BODY, T0).split(",")[1]
    verify(SECRET, BODY, f"t={T0},v0=legacy,v1={'0' * 64},{good},v2=future", now=T0)


def test_sign_rejects_bad_timestamps() -> None:
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            sign(SECRET, BODY, bad)  # type: ignore[arg-type]


def _documented_receiver() -> Callable[..., bool]:
    """Exec the exact receiver example from the module docstring."""
    doc = signing.__doc__ or ""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Receiver example"))
    assert lines[start].endswith("::")
    block: list[str] = []
    for line in lines[start + 1 :]:
        if line and not line.startswith("    "):
            break
        block.append(line)
    namespace: dict[str, object] = {}
    exec(textwrap.dedent("\n".join(block)), namespace)
    receiver = namespace["verify_rampmon"]
    assert callable(receiver)
    return receiver


def test_documented_receiver_example_accepts_and_rejects_like_verify() -> None:
    receiver = _documented_receiver()
    now = int(time.time())
    fresh = sign(SECRET, BODY, now)
    assert receiver(SECRET, BODY, fresh) is True
    verify(SECRET, BODY, fresh)
    rejected = [
        (SECRET, BODY + b" ", fresh),
        (b"wrong", BODY, fresh),
        (SECRET, BODY, sign(SECRET, BODY, now - 3600)),
        (SECRET, BODY, "garbage"),
        (SECRET, BODY, f"t=１７,v1={'0' * 64}"),
        (SECRET, BODY, f"t={now},v1=ünïcode"),
    ]
    for secret, body, header in rejected:
        assert receiver(secret, body, header) is False
        with pytest.raises(SignatureError):
            verify(secret, body, header)
    rotated = f"t={now},v1={'0' * 64},{fresh.split(',')[1]}"
    assert receiver(SECRET, BODY, rotated) is True


def _readme_receiver_source() -> str:
    """The ```python block of README.md that defines ``verify_rampmon``."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    (block,) = [b for b in blocks if "def verify_rampmon(" in b]
    return block


def test_readme_receiver_example_is_the_docstring_example() -> None:
    # the README is what receivers copy; the docstring is what the test above executes
    doc = signing.__doc__ or ""
    start = doc.index("    import hashlib")
    end = doc.index("\n\n", doc.index("return any(", start))
    documented = textwrap.dedent(doc[start:end])
    assert ast.dump(ast.parse(_readme_receiver_source())) == ast.dump(ast.parse(documented))


def test_documented_receiver_example_on_a_cloudevent_body() -> None:
    # the signature covers the raw bytes whatever the format: a CloudEvent verifies the same
    receiver = _documented_receiver()
    notice = DecisionNotice(
        experiment="checkout.v2", stage=5, decision="rollback", guardrail="error_rate",
        metric="errors", variant="treatment", effect=0.031, lower=0.012, upper=math.inf,
        margin=0.01, decided_at=T0, reason="error_rate harm",
    )  # fmt: skip
    body = to_cloudevent(notice, source="/rampmon/test")
    now = int(time.time())
    assert receiver(SECRET, body, sign(SECRET, body, now)) is True
    tampered = body.replace(b"io.rampmon.decision.rollback", b"io.rampmon.decision.advance")
    assert tampered != body
    assert receiver(SECRET, tampered, sign(SECRET, body, now)) is False
    assert receiver(SECRET, body, sign(SECRET, body, now - 301)) is False


def test_regression_a_timestamp_too_long_for_int_is_a_signature_error_not_a_crash() -> None:
    """Review (decide path): Python 3.11 refuses ``int()`` of a decimal string over 4300
    digits with ValueError. ``verify`` promises that "a hostile header must end as
    SignatureError, never as a crash", and the reference receiver catches only
    SignatureError, so such a header was a 500 there; the documented receiver example
    raised instead of answering False."""
    header = f"t={'9' * 5000},v1={'0' * 64}"
    with pytest.raises(SignatureError):
        verify(SECRET, BODY, header, now=T0)
    assert _documented_receiver()(SECRET, BODY, header) is False
