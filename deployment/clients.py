"""boto3 clients, made once per container and reused across invocations."""

from __future__ import annotations

import functools


@functools.cache
def _session():
    import boto3

    return boto3.session.Session()  # one session: service models are parsed once


@functools.cache
def client(name: str):
    from botocore.config import Config

    return _session().client(
        name, config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"})
    )


def forget() -> None:
    """Drop the cached clients: the next ones read the environment afresh."""
    client.cache_clear()
