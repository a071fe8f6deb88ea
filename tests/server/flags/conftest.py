"""Helpers for the flag tests: tokens by role, unique keys, a flag made through the API."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from server.auth.models import Role
from tests.support import http


def new_key(prefix: str = "flag") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def flag_body(key: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"key": key, "type": "boolean", "variants": {"on": True, "off": False},
                            "default_variant": "off", "description": "test flag", "reason": "test"}
    body.update(extra)
    return body


@pytest.fixture(scope="session")
def operator_token(make_token) -> str:
    return make_token(Role.operator)


@pytest.fixture(scope="session")
def client_token(make_token) -> str:
    return make_token(Role.client)


@pytest.fixture
def api(base_url, operator_token):
    with http(base_url, operator_token) as client:
        yield client


@pytest.fixture
def make_flag(api):
    def make(key: str | None = None, **extra: Any) -> dict[str, Any]:
        response = api.post("/api/v1/flags", json=flag_body(key or new_key(), **extra))
        assert response.status_code == 201, response.text
        return response.json()

    return make
