"""Clients for Kafka and Redis built from the settings: TLS, SASL and AUTH pass through.

The worker's security settings go to the clients as they are (aiokafka's
``security_protocol`` / SASL mechanisms through Faust's credentials, redis-py's ``rediss://``
and ``password``); nothing here logs or returns a secret.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from streams.settings import Settings

__all__ = ["broker_credentials", "kafka_client_options", "redis_client"]


def redis_client(settings: Settings, **options: Any) -> Redis:
    """``rediss://`` URLs use TLS (verified against ``redis_ssl_ca_certs`` when given);
    ``redis_password`` overrides a password in the URL, so the URL need not hold one."""
    kwargs: dict[str, Any] = dict(options)
    password = settings.redis_password.get_secret_value()
    if password:
        kwargs["password"] = password
    if settings.redis_ssl_ca_certs is not None:
        kwargs["ssl_ca_certs"] = str(settings.redis_ssl_ca_certs)
    return Redis.from_url(settings.redis_url, **kwargs)


def broker_credentials(settings: Settings) -> Any:
    """Faust credentials for ``kafka_security_protocol``, or None for PLAINTEXT."""
    import faust
    from aiokafka.helpers import create_ssl_context

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = create_ssl_context(
            cafile=_path(settings.kafka_ssl_cafile),
            certfile=_path(settings.kafka_ssl_certfile),
            keyfile=_path(settings.kafka_ssl_keyfile),
        )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),
        ssl_context=context,
        mechanism=settings.kafka_sasl_mechanism,
    )


def _path(value: Any) -> str | None:
    return None if value is None else str(value)


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """``bootstrap_servers`` and security options for a plain aiokafka client of the
    worker's broker (``kafka://a:9092;b:9092`` in Faust's URL form), as Faust gives its own."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    servers = [u.split("://", 1)[-1] for u in settings.broker_url.split(";") if u.strip()]
    options: dict[str, Any] = {"bootstrap_servers": ",".join(servers)}
    credentials = broker_credentials(settings)
    if credentials is not None:
        options.update(credentials_to_aiokafka_auth(credentials))
    return options
