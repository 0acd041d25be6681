"""Reaching the real servers tests use, and what to do when they are down.

Under ``PYWORKFLOW_REQUIRE_SERVICES=1`` (set by ``.ci/run``) an unreachable server fails
the test instead of skipping it: a skipped backend proves nothing in CI.
"""

from __future__ import annotations

import os
import socket

import pytest

REDIS_HOST = os.environ.get("PYWORKFLOW_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("PYWORKFLOW_TEST_REDIS_PORT", "6379"))
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/15"
POSTGRES_URL = os.environ.get("PYWORKFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
RABBITMQ_HOST = os.environ.get("PYWORKFLOW_TEST_RABBITMQ_HOST", "127.0.0.1")
RABBITMQ_PORT = int(os.environ.get("PYWORKFLOW_TEST_RABBITMQ_PORT", "5672"))
RABBITMQ_USER = os.environ.get("PYWORKFLOW_TEST_RABBITMQ_USER", "guest")
RABBITMQ_PASSWORD = os.environ.get("PYWORKFLOW_TEST_RABBITMQ_PASSWORD", "guest")
# the broker tests make a vhost of their own with it; e.g. "docker exec rabbit rabbitmqctl"
RABBITMQCTL = os.environ.get("PYWORKFLOW_TEST_RABBITMQCTL", "rabbitmqctl")


def services_required() -> bool:
    return os.environ.get("PYWORKFLOW_REQUIRE_SERVICES", "") not in ("", "0", "false", "no")


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require(name: str, host: str, port: int) -> None:
    """Skip (or, when services are required, fail) unless ``host:port`` answers."""
    if not reachable(host, port):
        unavailable(f"{name} is not reachable on {host}:{port}")


def unavailable(message: str) -> None:
    """Skip the test, or fail it when services are required."""
    if services_required():
        pytest.fail(message + " and PYWORKFLOW_REQUIRE_SERVICES is set", pytrace=False)
    pytest.skip(message)


def require_redis() -> None:
    require("Redis", REDIS_HOST, REDIS_PORT)


def require_postgres() -> None:
    require("PostgreSQL", "127.0.0.1", 5432)


def require_rabbitmq() -> None:
    require("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
