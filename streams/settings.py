"""Runtime settings: one frozen pydantic-settings class, read from ``RAMPMON_*`` env vars."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["SECRET_FIELDS", "Settings"]

Seconds = Annotated[float, Field(gt=0)]

#: secrets that may also come from a file (``RAMPMON_<NAME>_FILE``, e.g. a Docker or
#: Kubernetes secret mount) instead of the environment
SECRET_FIELDS = ("webhook_secret", "api_token", "redis_password", "kafka_sasl_password")


class Settings(BaseSettings):
    """Everything a deployment sets; docker-compose passes these as environment variables."""

    model_config = SettingsConfigDict(env_prefix="RAMPMON_", frozen=True, extra="ignore")

    app_id: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")] = "rampmon"
    broker_url: str = "kafka://localhost:9092"
    #: ``rediss://`` for TLS; the password belongs in RAMPMON_REDIS_PASSWORD(_FILE), not here
    redis_url: str = "redis://localhost:6379/0"
    redis_password: SecretStr = SecretStr("")
    redis_password_file: Path | None = None
    #: CA bundle to verify a ``rediss://`` server with (default: the system's)
    redis_ssl_ca_certs: Path | None = None
    # Kafka security, passed to Faust's (aiokafka's) clients as they are
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_sasl_password_file: Path | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
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
    webhook_secret_file: Path | None = None
    #: bearer token of the control API's write endpoints; empty disables them (403)
    api_token: SecretStr = SecretStr("")
    api_token_file: Path | None = None
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
    #: the most of its event loop's time the evaluating worker spends in readouts, in the
    #: long run (streams.readouts.ReadoutBudget); past it, readouts of new snapshots wait and
    #: ingest keeps the rest (the periodic readouts spend it but never wait). 1: no bound
    readout_loop_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    #: how often each worker publishes its per-partition snapshots to the evaluator. Half a
    #: second: the wait for the next publish is the largest share of detection latency
    #: (p50 2.13 -> 1.82 s at 10,000 events/s); it costs ~1-2 us of CPU per event at that
    #: rate (bench/README.md, throughput and detection, 2026-12-02)
    publish_interval_seconds: Seconds = 0.5
    #: how often the publish loop wakes to check the lag (at most every interval). A worker
    #: whose last publish found it behind its source partitions publishes again at the first
    #: check that finds it caught up (lag 0 by its consumer's high watermarks), not up to an
    #: interval later: at most one extra publish per interval (streams.pacing). It also
    #: checks at the end of each run then. 0: publish every interval only; otherwise at
    #: least 0.01
    publish_catch_up_check_seconds: Annotated[float, Field(ge=0)] = 0.1
    stage_refresh_seconds: Seconds = 1.0
    #: the cyclic garbage collector's generation-0 threshold in the worker (CPython's
    #: default is 700), above the records a draining worker holds in flight; 0 keeps the
    #: default. See streams.gctune
    gc_gen0_threshold: Annotated[int, Field(ge=0)] = 1_000_000
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
    #: table store: memory (the demo and tests) or RocksDB under ``data_dir`` (production:
    #: unit records on disk, bounded caches in memory; bench/README.md "Units and the table
    #: store")
    store: Literal["memory://", "rocksdb://"] = "memory://"
    #: RocksDB memory per database -- one per table and partition, so a worker holding P
    #: partitions of the 3 tables needs up to 3 * P * (2 * write buffer + block cache).
    #: Faust's defaults (3 x 64 MiB memtables, a 2 GiB cache each) would keep a million units
    #: in memtables and never bound RSS
    rocksdb_write_buffer_bytes: Annotated[int, Field(ge=1 << 20)] = 4 << 20
    rocksdb_block_cache_bytes: Annotated[int, Field(ge=0)] = 8 << 20
    #: Faust refuses to recover a changelog partition whose last-read offset is past the
    #: broker's high watermark (a truncated topic behind a RocksDB copy). The bundled tansu
    #: broker serves fetches up to its log end while reporting a lagging high watermark, so a
    #: live rebalance on it trips the check; Apache Kafka never does (keep it on there)
    recovery_consistency_check: bool = True
    #: Faust defaults make a group join take ~30 s on the bundled broker (MEASUREMENTS.md)
    broker_session_timeout_seconds: Seconds = 10.0
    broker_rebalance_timeout_seconds: Seconds = 5.0
    #: the longest a fetch waits on the broker for records (Faust: 1.5 s). Apache Kafka
    #: answers as soon as one arrives; the bundled tansu broker always waits it out, which
    #: put ~0.5 s between a snapshot's publish and its readout (README "Latency on the
    #: bundled broker"). An idle worker pays one fetch request per wait per broker
    consumer_fetch_max_wait_seconds: Annotated[float, Field(gt=0, le=30)] = 0.1
    #: how long the producer retries a batch before it fails it (Faust's default). A run
    #: whose changelog batch or dead letter fails is never acked, and the worker exits
    #: (streams.acks), so this is also how long a worker outlives a changelog partition
    #: it cannot write to
    producer_request_timeout_seconds: Seconds = 1200.0
    #: a logging level name, any case (Faust's worker fails to start on another)
    log_level: str = "WARN"

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.upper() not in logging.getLevelNamesMapping() or value.upper() == "NOTSET":
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (any case)")
        return value.upper()

    @field_validator("publish_catch_up_check_seconds")
    @classmethod
    def _check_not_a_busy_loop(cls, value: float) -> float:
        if 0 < value < 0.01:
            raise ValueError("must be 0 (no early publish) or at least 0.01 seconds")
        return value

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        """``RAMPMON_<NAME>_FILE`` fills an unset secret from that file (trailing newline
        dropped); a set secret and a file together are ambiguous and refused."""
        if not isinstance(data, dict):
            return data
        for name in SECRET_FIELDS:
            path = data.get(f"{name}_file")
            if not path:
                continue
            env = f"RAMPMON_{name.upper()}"
            if data.get(name):
                raise ValueError(f"{env}, {env}_FILE: set one or the other, not both")
            try:
                data[name] = Path(path).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"{env}_FILE: cannot read {path}: {exc.strerror}") from None
        return data
