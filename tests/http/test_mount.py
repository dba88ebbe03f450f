"""The gateway inside a user's app, and its own lifespan when it is the app."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from dromos.http import gateway
from tests.http.conftest import MakeStack, Server
from tests.http.tasks_app import create_app


async def _home(request: Any) -> PlainTextResponse:
    return PlainTextResponse("the user's own route")


def test_mounted_under_a_prefix_in_a_starlette_app(make_stack: MakeStack, sqlite_url: str) -> None:
    stack = make_stack(sqlite_url)
    site = Starlette(routes=[Route("/", _home), Mount("/jobs-api", app=stack.api)])
    stack.server.target = site
    client = stack.client
    assert client.get("/").text == "the user's own route"
    response = client.post(
        "/jobs-api/v1/tasks/add/jobs", json={"args": [4, 5]}, headers={"Prefer": "wait=10"}
    )
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/jobs-api/v1/jobs/{job_id}"
    assert client.get(response.headers["location"]).json()["result"] == 9
    listing = client.get("/jobs-api/v1/jobs?limit=1")
    assert listing.status_code == 200
    missing = client.get("/jobs-api/v1/jobs/nope")
    assert missing.status_code == 404
    assert missing.json()["instance"] == "/jobs-api/v1/jobs/nope"
    assert client.get("/jobs-api/openapi.json").status_code == 200


def test_mounted_in_a_fastapi_app(make_stack: MakeStack, sqlite_url: str) -> None:
    stack = make_stack(sqlite_url, worker=False)
    site = FastAPI()
    site.mount("/jobs-api", stack.api)
    stack.server.target = site
    response = stack.client.post("/jobs-api/v1/tasks/add/jobs", json={"args": [1]})
    assert response.status_code == 202
    assert response.headers["location"].startswith("/jobs-api/v1/jobs/")
    assert stack.client.get("/jobs-api/v1/queues").json()["queues"][0]["counts"]["queued"] == 1


def test_the_lifespan_closes_the_broker_at_shutdown(sqlite_url: str) -> None:
    app = create_app(sqlite_url)
    closed: list[bool] = []
    original = app.aclose

    async def aclose() -> None:
        closed.append(True)
        await original()

    app.aclose = aclose  # type: ignore[method-assign]
    server = Server(gateway(app), lifespan="on")
    server.start()
    try:
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/readyz").status_code == 200  # connects the broker
        assert closed == []
    finally:
        server.stop()
    assert closed == [True]
    app.portal.stop()
