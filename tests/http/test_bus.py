"""The event bus over HTTP: publish, SSE streams per consumer group, AsyncAPI; both brokers."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from tests.http.conftest import ADMIN_KEY, API_KEYS, BOTH_KEY, MakeStack, Stack
from tests.http.test_events import _events

PUBLISH_KEY = "publish-key-0123456789abcdef"


def _take(stack: Stack, pattern: str, group: str, n: int) -> list[dict[str, Any]]:
    """The first ``n`` events of ``group`` on ``pattern`` (from the earliest), then hang up."""
    got: list[dict[str, Any]] = []
    params = {"group": group, "start": "earliest"}
    with stack.client.stream("GET", f"/v1/events/{pattern}/stream", params=params) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in _events(response):
            got.append(event)
            if len(got) == n:
                break
    return got


def test_published_events_stream_to_every_group(stack: Stack) -> None:
    ids = []
    for i in range(3):
        answer = stack.client.post("/v1/events/orders.created", json={"sku": f"s{i}"})
        assert answer.status_code == 202, answer.text
        assert answer.json()["topic"] == "orders.created"
        ids.append(answer.json()["id"])
    other = stack.client.post("/v1/events/payments.done", json=[1, 2])
    assert other.status_code == 202
    for group in ("shipping", "analytics"):
        got = _take(stack, "orders.*", group, 3)
        assert [e["data"]["id"] for e in got] == ids
        assert {e["event"] for e in got} == {"orders.created"}
        assert [e["data"]["data"]["sku"] for e in got] == ["s0", "s1", "s2"]
        assert got[0]["data"]["data"]["quantity"] == 1  # the declared type's default
        assert got[0]["data"]["specversion"] == "1.0"
    everything = _take(stack, "%23", "all", 4)  # "#", URL-encoded
    assert [e["event"] for e in everything] == ["orders.created"] * 3 + ["payments.done"]


def test_a_group_resumes_after_what_its_last_connection_was_sent(stack: Stack) -> None:
    for i in range(3):
        stack.client.post("/v1/events/audit.login", json={"sku": str(i)})
    first = _take(stack, "audit.*", "ops", 3)
    for i in range(3, 5):
        stack.client.post("/v1/events/audit.login", json={"sku": str(i)})
    rest = _take(stack, "audit.*", "ops", 2)  # "earliest" only places a *new* group
    assert [e["data"]["data"]["sku"] for e in first + rest] == ["0", "1", "2", "3", "4"]


def test_a_cloudevent_body_keeps_its_attributes(stack: Stack) -> None:
    event = {
        "specversion": "1.0", "id": "evt-42", "source": "/billing", "type": "bill.paid",
        "subject": "invoice-9", "traceparent": "00-abc-def-01", "data": {"amount": 5},
    }  # fmt: skip
    cloudevent = {"content-type": "application/cloudevents+json"}
    answer = stack.client.post(
        "/v1/events/bill.paid", content=json.dumps(event), headers=cloudevent
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["id"] == "evt-42"
    [got] = _take(stack, "bill.paid", "books", 1)
    body = got["data"]
    assert (body["id"], body["subject"], body["traceparent"], body["data"]) == (
        "evt-42", "invoice-9", "00-abc-def-01", {"amount": 5})  # fmt: skip
    assert body["source"] == "/billing"  # the publisher's own
    wrong = stack.client.post(
        "/v1/events/other.topic", content=json.dumps(event), headers=cloudevent
    )
    assert wrong.status_code == 422


@pytest.mark.parametrize(
    ("topic", "body", "content_type", "status"),
    [
        ("orders.created", b'{"sku": 5, "quantity": "x"}', "application/json", 422),
        ("orders created", b"{}", "application/json", 422),
        ("orders.created", b"{nope", "application/json", 400),
        ("orders.created", b"{}", "text/plain", 415),
    ],
)
def test_bad_events_are_refused_and_nothing_is_published(
    sqlite_stack: Stack, topic: str, body: bytes, content_type: str, status: int
) -> None:
    answer = sqlite_stack.client.post(f"/v1/events/{topic}", content=body,
                                      headers={"content-type": content_type})  # fmt: skip
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    if status == 422 and topic == "orders.created":
        fields = {e["field"] for e in answer.json()["errors"]}
        assert {"data.quantity"} <= fields
    sqlite_stack.client.post("/v1/events/orders.created", json={"sku": "ok"})
    [first] = _take(sqlite_stack, "%23", "check", 1)
    assert first["data"]["data"]["sku"] == "ok"  # the refused one never reached the bus


def test_publishing_needs_the_publish_scope(make_stack: MakeStack, sqlite_url: str) -> None:
    stack = make_stack(sqlite_url, worker=False, api_keys=f"{API_KEYS},{PUBLISH_KEY}:publish")
    post = stack.client.post
    assert post("/v1/events/a.b", json=1).status_code == 401
    assert post("/v1/events/a.b", json=1, headers={"X-API-Key": BOTH_KEY}).status_code == 403
    assert post("/v1/events/a.b", json=1, headers={"X-API-Key": PUBLISH_KEY}).status_code == 202
    assert post("/v1/events/a.b", json=1, headers={"X-API-Key": ADMIN_KEY}).status_code == 202
    stream = stack.client.get("/v1/events/a.b/stream", params={"group": "g"},
                              headers={"X-API-Key": PUBLISH_KEY})  # fmt: skip
    assert stream.status_code == 403  # reading needs "read"


def test_a_stream_needs_a_good_group_and_pattern(sqlite_stack: Stack) -> None:
    get = sqlite_stack.client.get
    assert get("/v1/events/a.b/stream").status_code == 422  # no group
    assert get("/v1/events/a.b/stream", params={"group": "bad group"}).status_code == 422
    assert get("/v1/events/a..b/stream", params={"group": "g"}).status_code == 422


def test_two_connections_of_one_group_share_its_events(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    for i in range(20):
        stack.client.post("/v1/events/jobs.made", json=i)
    seen: list[list[int]] = [[], []]

    def consume(k: int) -> None:
        # A connection that gets nothing for 3 s ends (the server's keep-alive comes at 15 s).
        params = {"group": "pair", "start": "earliest"}
        with httpx.Client(base_url=stack.server.url, timeout=3) as client:
            try:
                with client.stream("GET", "/v1/events/jobs.made/stream", params=params) as answer:
                    for event in _events(answer):
                        seen[k].append(event["data"]["data"])
                        if sum(map(len, seen)) >= 20:
                            break
            except httpx.ReadTimeout:
                pass

    threads = [threading.Thread(target=consume, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    together = sorted(seen[0] + seen[1])
    assert together == list(range(20))  # every event, none twice


def test_the_asyncapi_document_describes_the_topics(sqlite_stack: Stack) -> None:
    doc = sqlite_stack.client.get("/asyncapi.json").json()
    assert doc["asyncapi"] == "3.0.0"
    channels = {c["address"]: c for c in doc["channels"].values()}
    assert {"orders.created", "audit.#"} <= set(channels)
    [message_ref] = channels["orders.created"]["messages"].values()
    name = message_ref["$ref"].rsplit("/", 1)[1]
    payload = doc["components"]["messages"][name]["payload"]
    assert payload["properties"]["type"] == {"const": "orders.created"}
    data = payload["properties"]["data"]
    assert data["$ref"].startswith("#/components/schemas/")
    item = doc["components"]["schemas"][data["$ref"].rsplit("/", 1)[1]]
    assert set(item["properties"]) == {"sku", "quantity"}
    actions = {op["action"] for op in doc["operations"].values()}
    assert actions == {"send", "receive"}
    assert any("http-audit" in op["summary"] for op in doc["operations"].values())
