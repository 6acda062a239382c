"""Runtime settings: one frozen pydantic-settings class, read from ``RAMPMON_*`` env vars."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]

Seconds = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    """Everything a deployment sets; docker-compose passes these as environment variables."""

    model_config = SettingsConfigDict(env_prefix="RAMPMON_", frozen=True, extra="ignore")

    app_id: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")] = "rampmon"
    broker_url: str = "kafka://localhost:9092"
    redis_url: str = "redis://localhost:6379/0"
    web_host: str = "0.0.0.0"
    web_port: Annotated[int, Field(ge=1, le=65535)] = 6066
    partitions: Annotated[int, Field(ge=1, le=1024)] = 4
    topic_exposures: str = "exposures"
    topic_telemetry: str = "telemetry"
    topic_decisions: str = "decisions"
    topic_deadletter: str = "rampmon-deadletter"
    topic_partials: str = "rampmon-partials"
    #: HMAC-SHA256 key for rollback webhooks; required when webhooks are configured
    webhook_secret: SecretStr = SecretStr("")
    #: bearer token of the control API's write endpoints; empty disables them (403)
    api_token: SecretStr = SecretStr("")
    #: Alertmanager base URLs, comma-separated (HA pairs get every alert); empty: no push
    alertmanager_url: str = ""
    #: how often a firing alert is re-sent; Alertmanager resolves it by itself after 4x
    alert_resend_seconds: Seconds = 30.0
    #: base of the runbook links in alerts (deploy/RUNBOOK.md in this repository)
    runbook_url: str = "https://github.com/rampmon/rampmon/blob/main/deploy/RUNBOOK.md"
    webhook_timeout_seconds: Seconds = 5.0
    webhook_max_attempts: Annotated[int, Field(ge=1, le=100)] = 8
    webhook_base_delay_seconds: Seconds = 0.5
    webhook_max_delay_seconds: Seconds = 60.0
    evaluate_interval_seconds: Seconds = 1.0
    publish_interval_seconds: Seconds = 1.0
    stage_refresh_seconds: Seconds = 1.0
    #: how long ingest waits for the stage history from Redis at start before using defaults
    stage_wait_seconds: Seconds = 10.0
    max_message_bytes: Annotated[int, Field(ge=1024)] = 1_048_576
    max_pending_events_per_unit: Annotated[int, Field(ge=0)] = 64
    #: a telemetry event_id seen again within this much event time of the unit's newest
    #: event is a producer's re-send: counted as duplicate and dropped
    dedup_horizon_seconds: Annotated[float, Field(ge=0)] = 300.0
    #: events older than this (a backfill, a broken clock) are dead-lettered as bad_timestamp
    max_event_age_seconds: Seconds = 30 * 86400.0
    #: events this far ahead of the worker's clock are dead-lettered as bad_timestamp
    max_clock_skew_seconds: Seconds = 300.0
    data_dir: Path = Path("var/rampmon")
    store: str = "memory://"
    #: Faust defaults make a group join take ~30 s on the bundled broker (MEASUREMENTS.md)
    broker_session_timeout_seconds: Seconds = 10.0
    broker_rebalance_timeout_seconds: Seconds = 5.0
    log_level: str = "WARN"
