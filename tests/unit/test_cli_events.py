"""``dromos publish`` and ``dromos events groups|dlq|replay`` against a SQLite file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from dromos.brokers import create_broker
from dromos.brokers.base import Broker, EventOutcome
from dromos.events import decode_event
from dromos.job import JobError
from tests.unit.test_cli import Cli, cli, db  # noqa: F401 - fixtures


def _on(url: str, action: object) -> object:
    async def run() -> object:
        broker: Broker = create_broker(url)
        await broker.open()
        try:
            return await action(broker)  # type: ignore[operator]
        finally:
            await broker.close()

    return asyncio.run(run())


def test_publish_puts_a_cloudevent_on_the_bus(cli: Cli, db: str) -> None:  # noqa: F811
    async def join(b: Broker) -> None:
        await b.join_group("ops", ["orders.#"], "latest")

    _on(db, join)
    code, out, _ = cli("publish", "orders.created", '{"id": 7}', "--subject", "order-7")
    assert code == 0
    event_id = out.strip()

    async def claim(b: Broker) -> list:  # type: ignore[type-arg]
        return await b.claim_events("ops", 10, 30.0)

    [delivery] = _on(db, claim)  # type: ignore[misc]
    event = decode_event(delivery.payload)
    assert (event.id, event.type, event.data, event.subject) == (
        event_id,
        "orders.created",
        {"id": 7},
        "order-7",
    )
    assert event.source == "/dromos/cli"


def test_publish_refuses_bad_json_and_bad_topics(cli: Cli, db: str) -> None:  # noqa: F811
    Path(db.removeprefix("sqlite:///")).touch()
    code, _, err = cli("publish", "orders.created", "{nope")
    assert code == 1
    assert "not valid JSON" in err
    code, _, err = cli("publish", "orders created", "{}")
    assert code == 1
    assert "topic" in err


def test_groups_dlq_and_replay(cli: Cli, db: str) -> None:  # noqa: F811
    async def setup(b: Broker) -> str:
        await b.join_group("billing", ["orders.*"], "latest")
        from tests.backends.test_events_contract import record

        await b.publish([record(data={"id": 1}), record(data={"id": 2})])
        first = await b.claim_events("billing", 1, 30.0)
        error = JobError(type="RuntimeError", message="card declined", attempt=1)
        await b.settle_events("billing", [EventOutcome(first[0].key, 1, error, None)])
        return first[0].key

    key = _on(db, setup)
    code, out, _ = cli("events", "groups", "--json")
    assert code == 0
    [group] = json.loads(out)
    assert (group["group"], group["lag"], group["dead"]) == ("billing", 1, 1)
    code, out, _ = cli("events", "groups")
    assert "billing" in out
    assert "orders.*" in out
    code, out, _ = cli("events", "dlq", "billing", "--json")
    [letter] = json.loads(out)
    assert (letter["key"], letter["topic"], letter["event"]["data"]) == (
        key,
        "orders.created",
        {"id": 1},
    )
    assert letter["errors"][0]["message"] == "card declined"
    code, out, _ = cli("events", "dlq", "billing")
    assert "RuntimeError" in out  # (the table wraps the message in a narrow terminal)
    code, out, _ = cli("events", "replay", "billing")
    assert (code, out.strip()) == (0, "replayed 1 event(s)")
    code, _, err = cli("events", "dlq", "billing")
    assert "no dead letters" in err


@pytest.mark.parametrize("args", [["events", "--help"], ["publish", "--help"]])
def test_help(cli: Cli, args: list[str]) -> None:  # noqa: F811
    code, out, _ = cli(*args)
    assert code == 0
    assert "Usage" in out


def test_tail_prints_new_events_and_leaves_no_group(cli: Cli, db: str) -> None:  # noqa: F811
    async def publish(b: Broker) -> None:
        from tests.backends.test_events_contract import record

        await b.publish([record("orders.created", {"id": 1}), record("payments.done", 2)])

    _on(db, publish)
    code, out, _ = cli("events", "tail", "orders.#", "--earliest", "-n", "1")
    assert code == 0
    assert "orders.created" in out
    assert '{"id":1}' in out
    code, out, _ = cli("events", "tail", "--earliest", "-n", "2", "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [e["type"] for e in lines] == ["orders.created", "payments.done"]

    async def groups(b: Broker) -> list:  # type: ignore[type-arg]
        return await b.event_groups()

    assert _on(db, groups) == []  # every tail left its group


def test_batch_status_shows_counts_and_watches_to_the_end(
    cli: Cli,  # noqa: F811
    db: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    import dromos

    app = dromos.App("b", broker=db)

    @app.task
    async def double(x: int) -> int:
        return 2 * x

    batch = app.tasks["double"].map(range(4))
    code, out, _ = cli("batch", "status", batch.id, "--json")
    assert code == 0
    assert json.loads(out)["total"] == 4
    assert json.loads(out)["done"] is False
    code, out, err = cli("batch", "status", batch.id, "--watch", "--timeout", "0.3")
    assert code == 1  # nobody runs it: not done in time
    assert "not done" in err

    async def run_all() -> None:
        worker = app.worker(concurrency=4)
        runner = asyncio.create_task(worker.run())
        await batch.aresults(timeout=10)
        worker.stop()
        await runner

    app.portal.call(run_all)
    code, out, _ = cli("batch", "status", batch.id, "--watch")
    assert code == 0
    assert "done, 4/4 ended: 4 succeeded" in " ".join(out.split())
    code, _, err = cli("batch", "status", "nope")
    assert code == 1
    assert "no batch" in err
    app.close()
