"""API keys and scopes, and the rate limit: who may do what, and how often."""

from __future__ import annotations

import hashlib

import pytest

from dromos.errors import ConfigurationError
from dromos.http import KeyRing, Scope, gateway, parse_api_keys
from tests.http.conftest import (
    ADMIN_KEY,
    API_KEYS,
    BOTH_KEY,
    ENQUEUE_KEY,
    READ_KEY,
    MakeStack,
    Stack,
)
from tests.http.tasks_app import create_app

PROBLEM = "application/problem+json"


@pytest.fixture
def keyed(make_stack: MakeStack, sqlite_url: str) -> Stack:
    return make_stack(sqlite_url, api_keys=API_KEYS)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_no_key_is_401_with_www_authenticate(keyed: Stack) -> None:
    for method, path in [("GET", "/v1/jobs"), ("GET", "/v1/queues"),
                         ("POST", "/v1/tasks/add/jobs"), ("DELETE", "/v1/jobs/x")]:  # fmt: skip
        response = keyed.client.request(method, path, json={"args": [1]})
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"] == 'Bearer realm="dromos"'
        assert response.headers["content-type"] == PROBLEM
    assert keyed.counts() == {}


def test_a_wrong_key_is_401_invalid_token(keyed: Stack) -> None:
    for headers in (_bearer("not-a-key-0123456789abcdef"), {"X-API-Key": READ_KEY + "x"},
                    {"Authorization": f"Basic {READ_KEY}"}):  # fmt: skip
        response = keyed.client.get("/v1/jobs", headers=headers)
        assert response.status_code == 401
    response = keyed.client.get("/v1/jobs", headers=_bearer("not-a-key-0123456789abcdef"))
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert response.json()["type"] == "urn:dromos:problem:invalid-key"


def test_keys_are_accepted_as_bearer_and_as_x_api_key(keyed: Stack) -> None:
    assert keyed.client.get("/v1/jobs", headers=_bearer(READ_KEY)).status_code == 200
    assert keyed.client.get("/v1/jobs", headers={"X-API-Key": READ_KEY}).status_code == 200
    assert keyed.client.get("/v1/jobs", headers={"Authorization": f"bearer {READ_KEY}"}).is_success


def test_each_scope_allows_its_routes_and_403_outside(keyed: Stack) -> None:
    created = keyed.client.post(
        "/v1/tasks/add/jobs", json={"args": [1]}, headers=_bearer(ENQUEUE_KEY)
    )
    assert created.status_code == 202
    job = created.json()["id"]
    failed = keyed.client.post(
        "/v1/tasks/fail/jobs",
        json={"args": ["x"]},
        headers={**_bearer(ENQUEUE_KEY), "Prefer": "wait=10"},
    ).json()["id"]

    def code(key: str, method: str, path: str) -> int:
        body = {"args": [1]} if method == "POST" and "tasks" in path else None
        return keyed.client.request(method, path, json=body, headers=_bearer(key)).status_code

    read_routes = [("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{job}"), ("GET", "/v1/queues")]
    for method, path in read_routes:
        assert code(READ_KEY, method, path) == 200
        assert code(ENQUEUE_KEY, method, path) == 403
        assert code(BOTH_KEY, method, path) == 200
        assert code(ADMIN_KEY, method, path) == 200
    assert code(READ_KEY, "POST", "/v1/tasks/add/jobs") == 403
    assert code(READ_KEY, "DELETE", f"/v1/jobs/{job}") == 403
    assert code(ENQUEUE_KEY, "DELETE", f"/v1/jobs/{job}") == 200
    # Replaying dead letters is for admins only.
    assert code(ENQUEUE_KEY, "POST", f"/v1/jobs/{failed}/retry") == 403
    assert code(BOTH_KEY, "POST", f"/v1/jobs/{failed}/retry") == 403
    assert code(ADMIN_KEY, "POST", f"/v1/jobs/{failed}/retry") == 202
    assert code(ADMIN_KEY, "POST", "/v1/tasks/add/jobs") == 202


def test_403_names_the_scope_needed(keyed: Stack) -> None:
    response = keyed.client.post("/v1/jobs/some-id/retry", headers=_bearer(BOTH_KEY))
    assert response.status_code == 403
    assert response.headers["content-type"] == PROBLEM
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert 'scope="admin"' in response.headers["www-authenticate"]
    assert "admin" in response.json()["detail"]


def test_the_probes_and_the_document_need_no_key(keyed: Stack) -> None:
    assert keyed.client.get("/healthz").status_code == 200
    assert keyed.client.get("/readyz").status_code == 200
    document = keyed.client.get("/openapi.json")
    assert document.status_code == 200
    schemes = document.json()["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer",
                                     "description": "Authorization: Bearer <API key>"}  # fmt: skip
    assert schemes["apiKeyHeader"]["name"] == "X-API-Key"


def test_the_environment_wins_over_the_argument(
    make_stack: MakeStack, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DROMOS_API_KEYS", f"{READ_KEY}:read")
    stack = make_stack(sqlite_url, api_keys=f"{ADMIN_KEY}:admin", worker=False)
    assert stack.client.get("/v1/jobs", headers=_bearer(READ_KEY)).status_code == 200
    assert stack.client.get("/v1/jobs", headers=_bearer(ADMIN_KEY)).status_code == 401


def test_keys_given_as_a_mapping(make_stack: MakeStack, sqlite_url: str) -> None:
    stack = make_stack(sqlite_url, api_keys={READ_KEY: ["read"], ADMIN_KEY: "admin"}, worker=False)
    assert stack.client.get("/v1/queues", headers=_bearer(READ_KEY)).status_code == 200
    assert stack.client.get("/v1/queues", headers=_bearer(ADMIN_KEY)).status_code == 200
    assert stack.client.get("/v1/queues").status_code == 401


def test_the_key_format() -> None:
    keys = parse_api_keys(f" {READ_KEY}:read , {BOTH_KEY}:enqueue+READ,{ADMIN_KEY},")
    assert keys == {
        READ_KEY: frozenset({Scope.READ}),
        BOTH_KEY: frozenset({Scope.ENQUEUE, Scope.READ}),
        ADMIN_KEY: frozenset({Scope.ADMIN}),  # a bare key is an admin key
    }


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (f"{READ_KEY}:write", "unknown scope 'write'"),
        ("abcXYZ123:read", "too short"),
    ],
)
def test_bad_keys_are_refused_without_showing_them(text: str, complaint: str) -> None:
    app = create_app("memory://")
    with pytest.raises(ConfigurationError, match=complaint) as caught:
        gateway(app, api_keys=text)
    assert text.split(":")[0] not in str(caught.value)


def test_only_digests_of_the_keys_are_kept() -> None:
    ring = KeyRing(parse_api_keys(API_KEYS))
    kept = repr(ring._entries)
    for key in (READ_KEY, ENQUEUE_KEY, BOTH_KEY, ADMIN_KEY):
        assert key not in kept
        assert hashlib.sha256(key.encode()).digest() in [d for d, _ in ring._entries]
    principal = ring.authenticate(BOTH_KEY)
    assert principal is not None
    assert principal.allows(Scope.READ)
    assert not principal.allows(Scope.ADMIN)
    assert ring.authenticate(BOTH_KEY[:-1]) is None


# -- rate limit ------------------------------------------------------------------------------
def test_over_the_rate_limit_is_429_with_retry_after(
    make_stack: MakeStack, sqlite_url: str
) -> None:
    stack = make_stack(sqlite_url, rate_limit="5/10s", worker=False)
    codes = [stack.client.get("/v1/jobs").status_code for _ in range(7)]
    assert codes == [200] * 5 + [429] * 2
    response = stack.client.get("/v1/jobs")
    assert response.headers["content-type"] == PROBLEM
    assert 1 <= int(response.headers["retry-after"]) <= 2
    assert stack.client.get("/healthz").status_code == 200  # probes are not limited


def test_each_key_has_its_own_bucket(make_stack: MakeStack, sqlite_url: str) -> None:
    stack = make_stack(sqlite_url, api_keys=API_KEYS, rate_limit="3/min", worker=False)
    read = [stack.client.get("/v1/jobs", headers=_bearer(READ_KEY)).status_code for _ in range(4)]
    admin = stack.client.get("/v1/jobs", headers=_bearer(ADMIN_KEY)).status_code
    assert read == [200, 200, 200, 429]
    assert admin == 200


def test_guessing_keys_is_rate_limited_per_client(make_stack: MakeStack, sqlite_url: str) -> None:
    stack = make_stack(sqlite_url, api_keys=API_KEYS, rate_limit="2/min", worker=False)
    guesses = [
        stack.client.get("/v1/jobs", headers=_bearer(f"guess-{i:020d}")).status_code
        for i in range(3)
    ]
    assert guesses == [401, 401, 429]


def test_the_rate_limit_from_the_environment(
    make_stack: MakeStack, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DROMOS_RATE_LIMIT", "1/min")
    stack = make_stack(sqlite_url, worker=False)
    assert [stack.client.get("/v1/queues").status_code for _ in range(2)] == [200, 429]


@pytest.mark.parametrize("text", ["100", "fast", "0/s", "10/fortnight", "-1/s"])
def test_a_bad_rate_is_refused(text: str) -> None:
    with pytest.raises(ConfigurationError, match="rate limit"):
        gateway(create_app("memory://"), rate_limit=text)
