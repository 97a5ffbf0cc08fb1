"""One running app for the route tests: the tiny random pipeline in one real worker
process, fp32 and bf16 variants, an API key (the client sends it unless a test
takes it away)."""

from __future__ import annotations

import pytest
from api_helpers import READY_WITHIN, wait_until
from fastapi.testclient import TestClient

from app.api.server import create_app
from app.settings import Settings

API_KEY = "test-key"


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(
        model="tiny-random",
        precisions=["fp32", "bf16"],
        workers=1,
        cores_per_worker=1,
        warmup_steps=1,
        queue_size=1,
        api_key=API_KEY,
        max_steps=100,
    )


@pytest.fixture(scope="session")
def client(settings):
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        wait_until(lambda: client.get("/health/ready").status_code == 200, READY_WITHIN, "the worker getting ready")
        yield client


@pytest.fixture
def idle_worker(client):
    """Every test starts with its worker idle: a previous test's cancelled job may still be stepping."""
    wait_until(
        lambda: all(w["state"] == "idle" for w in client.get("/health/ready").json()["workers"]),
        60,
        "the worker becoming idle",
    )
    return client
