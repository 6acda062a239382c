"""Runtime settings: secrets from files, security passed through to the clients."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
from pydantic import ValidationError

from monitor.config import MAX_CONFIG_BYTES, parse_config
from monitor.errors import ConfigError
from streams.connections import broker_credentials, redis_client
from streams.settings import SECRET_FIELDS, Settings


@pytest.mark.parametrize("name", SECRET_FIELDS)
def test_a_secret_can_come_from_a_file(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / name
    secret.write_text("s3cr3t-value\n")
    monkeypatch.setenv(f"RAMPMON_{name.upper()}_FILE", str(secret))
    value = getattr(Settings(), name)
    assert value.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t" not in repr(Settings()) and "s3cr3t" not in str(value)


def test_a_secret_and_its_file_together_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "s").write_text("a")
    monkeypatch.setenv("RAMPMON_API_TOKEN", "b")
    monkeypatch.setenv("RAMPMON_API_TOKEN_FILE", str(tmp_path / "s"))
    with pytest.raises(ValidationError, match="RAMPMON_API_TOKEN, RAMPMON_API_TOKEN_FILE: set one"):
        Settings()


def test_an_unreadable_secret_file_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAMPMON_WEBHOOK_SECRET_FILE", "/nonexistent/secret")
    with pytest.raises(ValidationError, match="RAMPMON_WEBHOOK_SECRET_FILE: cannot read"):
        Settings()


def test_plaintext_kafka_needs_no_credentials() -> None:
    assert broker_credentials(Settings()) is None


def test_sasl_ssl_reaches_faust_with_mechanism_user_password_and_tls() -> None:
    s = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="rampmon",
        kafka_sasl_password="pw",  # type: ignore[arg-type]
    )
    creds = broker_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password) == ("rampmon", "pw")
    assert str(getattr(creds.mechanism, "value", creds.mechanism)) == "SCRAM-SHA-512"
    assert isinstance(creds.ssl_context, ssl.SSLContext)


def test_ssl_only_gives_a_tls_context() -> None:
    creds = broker_credentials(Settings(kafka_security_protocol="SSL"))
    assert isinstance(creds, faust.SSLCredentials) and creds.context is not None


def test_redis_password_and_tls_pass_through() -> None:
    s = Settings(
        redis_url="rediss://cache.example:6380/2",
        redis_password="pw",  # type: ignore[arg-type]
        redis_ssl_ca_certs=Path("/etc/ssl/ca.pem"),
    )
    kwargs = redis_client(s).connection_pool.connection_kwargs
    assert kwargs["password"] == "pw" and kwargs["ssl_ca_certs"] == "/etc/ssl/ca.pem"
    assert kwargs["host"] == "cache.example" and kwargs["port"] == 6380 and kwargs["db"] == 2


def test_an_oversized_config_is_refused_before_parsing() -> None:
    with pytest.raises(ConfigError, match="over the 1048576 limit"):
        parse_config("#" * (MAX_CONFIG_BYTES + 1), source="big.yaml")


@pytest.mark.parametrize(
    ("protocol", "mechanism"), [("SASL_PLAINTEXT", "PLAIN"), ("SASL_SSL", "SCRAM-SHA-256")]
)
def test_faust_hands_the_sasl_settings_to_aiokafka(protocol: str, mechanism: str) -> None:
    """What aiokafka finally receives, through Faust's own conversion."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    s = Settings(
        kafka_security_protocol=protocol,  # type: ignore[arg-type]
        kafka_sasl_mechanism=mechanism,  # type: ignore[arg-type]
        kafka_sasl_username="u",
        kafka_sasl_password="p",  # type: ignore[arg-type]
    )
    auth = credentials_to_aiokafka_auth(broker_credentials(s))
    assert (auth["security_protocol"], auth["sasl_mechanism"]) == (protocol, mechanism)
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("u", "p")
    assert (auth["ssl_context"] is not None) == (protocol == "SASL_SSL")


def test_a_catch_up_check_that_would_spin_the_publish_loop_is_refused() -> None:
    with pytest.raises(ValidationError, match="publish_catch_up_check_seconds"):
        Settings(publish_catch_up_check_seconds=0.001)
    assert Settings(publish_catch_up_check_seconds=0).publish_catch_up_check_seconds == 0
    # an interval shorter than the check is valid: the loop then ticks every interval
    assert Settings(publish_interval_seconds=0.05).publish_interval_seconds == 0.05


@pytest.mark.parametrize("share", ["0", "-0.5", "1.01"])
def test_a_readout_share_outside_zero_to_one_is_refused_with_its_field(
    monkeypatch: pytest.MonkeyPatch, share: str
) -> None:
    monkeypatch.setenv("RAMPMON_READOUT_LOOP_SHARE", share)
    with pytest.raises(ValidationError, match="readout_loop_share"):
        Settings()


def test_a_readout_share_of_one_leaves_readouts_unbounded() -> None:
    assert Settings(readout_loop_share=1).readout_loop_share == 1.0
